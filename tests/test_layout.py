"""Laying out a growing answer while rendering only its open tail (pure).

The reference is the layout that renders the whole answer for every edit: the
incremental one must give the same messages at every step, and the same final messages
as rendering the complete answer once, while rendering O(length) Markdown in total.
"""

from __future__ import annotations

import random

import pytest

from bench._common import markdown_answer
from bot.delivery.layout import StreamLayout, safe_breaks
from bot.delivery.render import Rendered, cut_ranges, render, split


class FullLayout:
    """The layout before incremental rendering: the whole answer, rendered each time."""

    def __init__(self) -> None:
        self.frozen: list[Rendered] = []
        self.frozen_end = 0
        self.region = Rendered("")

    def layout(self, markdown: str, *, done: bool) -> list[Rendered]:
        full = render(markdown)
        if done and self.frozen and full.slice(0, self.frozen_end) != self.region:
            self.frozen, self.frozen_end = [], 0
        rest = full.slice(self.frozen_end, len(full.text))
        ranges = cut_ranges(rest)
        if not done and len(ranges) > 1:
            for start, end in ranges[:-1]:
                part = rest.slice(start, end).trimmed()
                if part.text:
                    self.frozen.append(part)
            self.frozen_end += ranges[-1][0]
            self.region = full.slice(0, self.frozen_end)
            rest = rest.slice(ranges[-1][0], len(rest.text))
        return [*self.frozen, *split(rest)]


def prefixes(text: str, rng: random.Random, low: int, high: int) -> list[str]:
    cuts, at = [], 0
    while at < len(text):
        at = min(len(text), at + rng.randint(low, high))
        cuts.append(text[:at])
    return cuts


def squashed(parts: list[Rendered]) -> str:
    """The parts' text without whitespace: cuts drop the whitespace they fall on."""
    return "".join("".join(part.text for part in parts).split())


@pytest.mark.parametrize("seed", range(12))
def test_every_step_equals_the_full_layout(seed: int) -> None:
    rng = random.Random(seed)
    answer = markdown_answer(rng.randint(9_000, 30_000), seed=seed)
    incremental, reference = StreamLayout(), FullLayout()
    anchors = set()
    for prefix in prefixes(answer, rng, 50, 1_500):
        assert incremental.layout(prefix, done=False) == reference.layout(prefix, done=False)
        anchors.add(incremental.anchor)
    assert len(anchors) >= 2  # it did render only a tail
    final = incremental.layout(answer, done=True)
    assert final == reference.layout(answer, done=True)
    # What the user finally sees is the rendered answer (parts trimmed at the cuts).
    assert squashed(final) == squashed([render(answer)])
    assert incremental.anchor == 0  # reset by the final layout
    assert len(final) >= 3


def test_rendering_is_linear_in_the_answer_length() -> None:
    answer = markdown_answer(100_000, seed=3)
    layout = StreamLayout()
    steps = prefixes(answer, random.Random(1), 400, 400)  # 400 characters per edit
    biggest_tail = 0
    for prefix in steps:
        before = layout.rendered_chars
        layout.layout(prefix, done=False)
        biggest_tail = max(biggest_tail, layout.rendered_chars - before)
    final = layout.layout(answer, done=True)
    assert squashed(final) == squashed([render(answer)])
    # One message is 4096 units: each edit renders about two, never the whole answer,
    # and the total is a small multiple of the length instead of ~length² / 800.
    assert biggest_tail < 20_000
    assert layout.rendered_chars < 30 * len(answer)


def test_a_definition_at_the_end_lays_the_answer_out_anew() -> None:
    paragraph = "see [the docs][d] for more words " * 40
    answer = "\n\n".join([paragraph.strip()] * 12)
    layout = StreamLayout()
    for prefix in prefixes(answer, random.Random(2), 300, 300):
        layout.layout(prefix, done=False)
    complete = answer + "\n\n[d]: https://example.com/docs"
    final = layout.layout(complete, done=True)
    full = render(complete)
    assert any(entity.type == "text_link" for entity in full.entities)
    assert squashed(final) == squashed([full])
    assert [e.type for part in final for e in part.entities] == [e.type for e in full.entities]


def test_breaks_skip_fences_lists_quotes_and_growing_lines() -> None:
    source = (
        "Intro\n\n"  # 0
        "```py\nx = 1\n\ny = 2\n```\n\n"  # 7: a blank line inside the fence is no break
        "After code\n\n"
        "- item\n\n- item two\n\n"
        "> quote\n\n"
        "    indented\n\n"
        "1. first\n\n"
        "## Heading\n\n"
        "Still grow"
    )
    found = [source[b : source.index("\n", b)] for b in safe_breaks(source)]
    assert found == ["After code", "## Heading"]
