"""Markdown → Telegram text + entities, trimming and splitting (pure)."""

from __future__ import annotations

import itertools

import pytest

from bot.delivery.render import (
    MAX_MESSAGE_UNITS,
    Entity,
    Rendered,
    cut_ranges,
    render,
    split,
    utf16_len,
)


def test_markdown_becomes_entities() -> None:
    rendered = render("**Bold** and `code`")
    assert rendered.text == "Bold and code"
    assert {(e.type, e.offset, e.length) for e in rendered.entities} == {
        ("bold", 0, 4),
        ("code", 9, 4),
    }


def test_half_written_markdown_renders_without_error() -> None:
    for partial in ["**Bo", "```py\nprint(", "[link](http://exa", "- item\n- it", "_it"]:
        assert render(partial).text


def test_offsets_are_utf16_units() -> None:
    rendered = render("🍂🍂 **b**")
    [bold] = rendered.entities
    assert (bold.offset, bold.length) == (5, 1)  # each leaf is 2 units, plus a space


def test_trimmed_shifts_and_clips_entities() -> None:
    raw = Rendered("  \n hi there \n", (Entity("bold", 0, 6), Entity("italic", 8, 6)))
    trimmed = raw.trimmed()
    assert trimmed.text == "hi there"
    assert trimmed.entities == (Entity("bold", 0, 2), Entity("italic", 4, 4))
    assert Rendered(" \n ").trimmed() == Rendered("")


def test_plain_drops_entities() -> None:
    assert render("**x**").plain() == Rendered("x")


def parts_text(parts: list[Rendered]) -> str:
    return "".join(part.text for part in parts)


def squash(text: str) -> str:
    return "".join(text.split())


def test_short_text_is_one_part() -> None:
    assert split(render("hello")) == [render("hello")]
    assert split(Rendered("   ")) == []


def test_split_prefers_paragraphs_then_lines_then_words() -> None:
    paragraph = "word " * 500  # 2500 units
    text = Rendered(f"{paragraph}\n\n{paragraph}\n\n{paragraph}")
    parts = split(text)
    assert [p.units for p in parts] == [2499, 2499, 2499]  # one paragraph each

    lines = Rendered("\n".join(["line of text"] * 1000))
    parts = split(lines)
    assert all(p.units <= MAX_MESSAGE_UNITS for p in parts)
    assert all(p.text.endswith("line of text") for p in parts)  # cut at line ends

    words = Rendered("abc " * 3000)
    parts = split(words)
    assert all(p.units <= MAX_MESSAGE_UNITS and p.text.endswith("abc") for p in parts)
    assert squash(parts_text(parts)) == squash(words.text)


def test_hard_split_without_any_boundary() -> None:
    text = Rendered("x" * 10_000)
    assert [p.units for p in split(text)] == [4096, 4096, 1808]


@pytest.mark.parametrize("filler", ["🍂", "日本", "é", "👨‍👩‍👧"])
def test_non_bmp_text_around_the_boundary(filler: str) -> None:
    for shift in range(4):
        text = Rendered("a" * shift + filler * 3000)
        parts = split(text)
        assert all(p.units <= MAX_MESSAGE_UNITS for p in parts)
        assert parts_text(parts) == text.text  # nothing lost, no broken surrogate
        for part in parts:
            part.text.encode("utf-16-le")  # would raise on a lone surrogate


def test_an_entity_crossing_a_split_is_closed_and_reopened() -> None:
    body = "x " * 3000
    rendered = Rendered(body.strip(), (Entity("bold", 0, len(body.strip())),))
    first, second = split(rendered)
    assert first.entities == (Entity("bold", 0, first.units),)
    assert second.entities == (Entity("bold", 0, second.units),)


def test_entities_keep_extra_fields_when_clipped() -> None:
    url = (("url", "https://example.com"),)
    rendered = Rendered("a" * 5000, (Entity("text_link", 4000, 200, url),))
    first, second = split(rendered)
    assert first.entities == (Entity("text_link", 4000, 96, url),)
    assert second.entities == (Entity("text_link", 0, 104, url),)


def test_cut_ranges_cover_the_text_exactly() -> None:
    rendered = render(("Paragraph **with bold** text. " * 40 + "\n\n") * 10)
    ranges = cut_ranges(rendered)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == len(rendered.text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_the_rendered_answer_survives_splitting() -> None:
    markdown = "\n\n".join(f"## Part {i}\n\n" + "Some *text* here. " * 60 for i in range(20))
    rendered = render(markdown)
    parts = split(rendered)
    assert len(parts) > 1
    assert squash(parts_text(parts)) == squash(rendered.text)
    assert utf16_len(rendered.text) > MAX_MESSAGE_UNITS
