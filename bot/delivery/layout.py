"""The messages a growing answer is laid out in, rendering only its open tail.

While an answer streams, a part that filled up is frozen: it keeps its content and is
not edited again, so that later text cannot move its boundaries. Rendering the whole
answer for every edit would render those parts again and again — O(length²) for a long
answer (bench/REPORT.md). So the layout keeps an *anchor*: a paragraph break in the
Markdown source at or before the first unfrozen text, such that the source rendered from
the anchor on is exactly the end of the whole answer's rendering. Each edit renders only
that tail, whose length stays around one message.

That equality is a property of the Markdown at hand, not a law (a list continued after a
blank line renders differently when cut there; a link reference defined later changes
earlier text). So the anchor moves only to a break that cannot be inside a code fence,
list, quote, table or definition, and only after checking that the old tail's rendering
ends with the new tail's (text and entities). When the answer is complete it is rendered
once in full and every frozen part compared with it: if one differs, the answer is laid
out anew from the full rendering, so the visible text always equals the rendered answer.
"""

from __future__ import annotations

import re
from typing import Final

from .render import Rendered, cut_ranges, render, split

__all__ = ["StreamLayout", "safe_breaks"]

# A line that opens or closes a fenced code block.
_FENCE: Final = re.compile(r" {0,3}(`{3,}|~{3,})")
# Lines a paragraph break must not lead to: indented (code, list continuation), list
# items, quotes, tables, HTML blocks, definitions — blocks that may continue across
# a blank line or that refer to others.
_UNSAFE_START: Final = re.compile(r"[\s\-*+>|<\[]|\d{1,9}[.)]")
# A link reference definition anywhere makes rendering non-local: no anchor at all.
_DEFINITION: Final = re.compile(r"^ {0,3}\[[^\]\n]+\]:", re.MULTILINE)
# How many breaks to check per freeze before keeping the anchor where it is.
_TRIES: Final = 3


def safe_breaks(source: str) -> list[int]:
    """Offsets in ``source`` just after a blank line, outside fenced code, where a
    complete line starts that begins a new top-level paragraph or heading."""
    breaks: list[int] = []
    fence: str | None = None
    position = 0
    blank_before = False
    lines = source.split("\n")
    for number, line in enumerate(lines):
        start, position = position, position + len(line) + 1
        complete = number < len(lines) - 1  # the last line may still be growing
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and stripped == stripped[0] * len(stripped):
                fence = None
            blank_before = False
            continue
        opener = _FENCE.match(line)
        if opener is not None:
            fence = opener.group(1)
        elif blank_before and complete and line and not _UNSAFE_START.match(line):
            breaks.append(start)
        blank_before = not line.strip()
    return breaks


class StreamLayout:
    """Lay out one answer: call :meth:`layout` with the whole Markdown so far, each time
    it grew, and once more with ``done=True`` when it is complete."""

    def __init__(self) -> None:
        self._frozen: list[Rendered] = []
        # Each frozen range in the full rendering's Python indices, with its trimmed
        # content (empty ones too: the final check must see them).
        self._ranges: list[tuple[int, int, Rendered]] = []
        self._frozen_end = 0  # where the open text starts in the full rendering
        self._anchor = 0  # source offset the tail is rendered from
        self._anchor_at = 0  # where render(markdown[anchor:]) starts in the full rendering
        self._pinned = False  # a definition was seen: render in full from now on
        self.rendered_chars = 0  # Markdown characters rendered so far (for benchmarks, tests)

    @property
    def anchor(self) -> int:
        return self._anchor

    def layout(self, markdown: str, *, done: bool) -> list[Rendered]:
        """The messages the answer should be now (possibly none)."""
        if done:
            return self._final(markdown)
        tail = self._render(markdown[self._anchor :])
        rest = tail.slice(self._frozen_end - self._anchor_at, len(tail.text))
        ranges = cut_ranges(rest)
        if len(ranges) > 1:
            for start, end in ranges[:-1]:
                part = rest.slice(start, end).trimmed()
                self._ranges.append((self._frozen_end + start, self._frozen_end + end, part))
                if part.text:
                    self._frozen.append(part)
            cut = ranges[-1][0]
            self._frozen_end += cut
            rest = rest.slice(cut, len(rest.text))
            self._advance(markdown, tail)
        return [*self._frozen, *split(rest)]

    def _final(self, markdown: str) -> list[Rendered]:
        full = self._render(markdown)
        if any(full.slice(start, end).trimmed() != part for start, end, part in self._ranges):
            # The complete Markdown renders the fixed parts differently (rare: e.g. a
            # link reference defined at the end). Correctness first: lay out anew.
            self._frozen, self._ranges, self._frozen_end = [], [], 0
        self._anchor = self._anchor_at = 0
        return [*self._frozen, *split(full.slice(self._frozen_end, len(full.text)))]

    def _advance(self, markdown: str, tail: Rendered) -> None:
        """Move the anchor to the last checked break before the open text."""
        if self._pinned:
            return
        source = markdown[self._anchor :]
        if _DEFINITION.search(source):
            self._pinned = True
            return
        # Where the open text starts, in the tail's rendering. Markup makes the source
        # longer than its rendering, so a break that far into the source usually
        # renders before it; the check below decides.
        need = self._frozen_end - self._anchor_at
        candidates = [b for b in safe_breaks(source) if 0 < b <= need]
        for brk in reversed(candidates[-_TRIES:]):
            new_tail = self._render(source[brk:])
            skipped = len(tail.text) - len(new_tail.text)
            if (
                0 <= skipped <= need
                and tail.text.endswith(new_tail.text)
                and tail.slice(skipped, len(tail.text)) == new_tail
            ):
                self._anchor += brk
                self._anchor_at += skipped
                return

    def _render(self, markdown: str) -> Rendered:
        self.rendered_chars += len(markdown)
        return render(markdown)
