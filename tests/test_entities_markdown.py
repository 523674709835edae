"""Pure functions behind "prompts reach the model as written": a message's entities as
Markdown (bot/entities_markdown.py) and mention removal (bot/addressing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiogram.types import MessageEntity

from bot.addressing import strip_mentions
from bot.entities_markdown import from_units, to_markdown, to_units


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def on(text: str, part: str, kind: str, nth: int = 0, **extra: Any) -> MessageEntity:
    """The entity of ``kind`` over the ``nth`` occurrence of ``part`` in ``text``."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(part, index + 1)
    return MessageEntity(type=kind, offset=u16(text[:index]), length=u16(part), **extra)


# --- to_markdown -------------------------------------------------------------------------


def test_no_entities_is_the_text_itself() -> None:
    text = "f(x). *not bold* _x_ [a](b) \\ `"
    assert to_markdown(text, None) == text
    assert to_markdown(text, []) == text


def test_pre_code_and_link() -> None:
    code = "def f(x):\n    return  x  *  2"
    text = f"Why does f(x). fail?\n{code}\nSee docs and use map here"
    entities = [
        on(text, code, "pre", language="python"),
        on(text, "map", "code"),
        on(text, "docs", "text_link", url="https://docs.python.org/3/"),
    ]
    assert to_markdown(text, entities) == (
        "Why does f(x). fail?\n"
        f"```python\n{code}\n```\n"
        "See [docs](https://docs.python.org/3/) and use `map` here"
    )


def test_pre_without_language() -> None:
    text = "log:\nERROR  at  line 3\n  caused by: x"
    body = "ERROR  at  line 3\n  caused by: x"
    assert to_markdown(text, [on(text, body, "pre")]) == f"log:\n```\n{body}\n```"


def test_pre_gets_lines_of_its_own() -> None:
    text = "run ls -la now"
    assert to_markdown(text, [on(text, "ls -la", "pre")]) == "run \n```\nls -la\n```\n now"
    assert to_markdown("ls", [on("ls", "ls", "pre", language="sh")]) == "```sh\nls\n```"


def test_emoji_before_entities_utf16_offsets() -> None:
    # Each of these is 2+ UTF-16 units: offsets after them must not drift.
    text = "🎃👩‍👩‍👧 try 𝔘 `x` then print(1)"
    entities = [on(text, "print(1)", "code"), on(text, "try", "bold")]
    assert to_markdown(text, entities) == "🎃👩‍👩‍👧 **try** 𝔘 `x` then `print(1)`"


def test_emoji_inside_entities() -> None:
    text = "a 😀 b"
    assert to_markdown(text, [on(text, "😀 b", "italic")]) == "a _😀 b_"


def test_bold_nested_in_text_link() -> None:
    text = "read the fine manual please"
    entities = [
        on(text, "the fine manual", "text_link", url="https://example.org/m"),
        on(text, "fine", "bold"),
    ]
    assert to_markdown(text, entities) == "read [the **fine** manual](https://example.org/m) please"


def test_entities_on_the_same_span_nest_link_outside() -> None:
    text = "click"
    entities = [on(text, "click", "bold"), on(text, "click", "text_link", url="https://e.x")]
    assert to_markdown(text, entities) == "[**click**](https://e.x)"


def test_nested_emphasis() -> None:
    text = "very important stuff"
    entities = [on(text, "very important stuff", "bold"), on(text, "important", "italic")]
    assert to_markdown(text, entities) == "**very _important_ stuff**"


def test_emphasis_markers_hug_the_words() -> None:
    text = "a bold  b"
    assert to_markdown(text, [on(text, " bold  ", "bold")]) == "a **bold**  b"
    assert to_markdown(text, [on(text, "  ", "bold")]) == text  # only whitespace: nothing


def test_nothing_is_escaped() -> None:
    text = "f(x). a_b *c* [d] #e 1+1=2 > q ~s~ |t| {u} !v"
    entities = [on(text, "f(x).", "bold"), on(text, "a_b", "code")]
    assert to_markdown(text, entities) == "**f(x).** `a_b` *c* [d] #e 1+1=2 > q ~s~ |t| {u} !v"


def test_backticks_inside_code_and_pre() -> None:
    text = "use a`b and\nx = ```\nok"
    entities = [on(text, "a`b", "code"), on(text, "x = ```", "pre")]
    assert to_markdown(text, entities) == "use ``a`b`` and\n````\nx = ```\n````\nok"
    text = "`tick`"
    assert to_markdown(text, [on(text, text, "code")]) == "`` `tick` ``"


def test_nothing_is_formatted_inside_code() -> None:
    text = "x = a*b*c"
    entities = [on(text, text, "code"), on(text, "b", "italic")]
    assert to_markdown(text, entities) == "`x = a*b*c`"


def test_other_entities_stay_plain_text() -> None:
    text = "@ann see https://e.x #tag /start hidden under"
    entities = [
        on(text, "@ann", "mention"),
        on(text, "https://e.x", "url"),
        on(text, "#tag", "hashtag"),
        on(text, "/start", "bot_command"),
        on(text, "hidden", "spoiler"),
        on(text, "under", "underline"),
    ]
    assert to_markdown(text, entities) == text


def test_partially_overlapping_entities_do_not_break_markdown() -> None:
    text = "one two three"
    entities = [on(text, "one two", "bold"), on(text, "two three", "italic")]
    assert to_markdown(text, entities) == "**one two** three"


def test_entities_past_the_end_are_clipped() -> None:
    entity = MessageEntity(type="bold", offset=2, length=50)
    assert to_markdown("a bc", [entity]) == "a **bc**"
    assert to_markdown("a bc", [MessageEntity(type="bold", offset=9, length=2)]) == "a bc"


def test_units_round_trip() -> None:
    text = "a😀b👩‍👩‍👧𝔘"
    units = to_units(text)
    assert len(units) == u16(text)
    assert from_units(units) == text
    assert from_units(units[:2]) == "a\ufffd"  # half a surrogate pair: no crash


# --- strip_mentions ----------------------------------------------------------------------

BOT = "@bot"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hey @bot, you", "Hey, you"),
        ("@bot what is", "what is"),
        ("@bot, what is", "what is"),
        ("@bot: what is", "what is"),
        ("Tell me @bot what rhymes", "Tell me what rhymes"),
        ("what rhymes?  @bot", "what rhymes?"),
        ("@bot", ""),
        ("@bot\n\n    def f():\n        pass", "    def f():\n        pass"),
        ("fix this:\n@bot\n    x  =  1\n\ty", "fix this:\n    x  =  1\n\ty"),
        ("explain @bot\n    a  =  1", "explain\n    a  =  1"),
        ("    a  =  1\n    @bot fix it", "    a  =  1\n    fix it"),
        ("    a  =  1\n\n@bot", "    a  =  1"),
        ("a  =  1 @bot  b  =  2", "a  =  1 b  =  2"),
        ("🎃 @bot   x", "🎃 x"),
        ("hi@bot there", "hi there"),
    ],
)
def test_mention_removal_touches_only_its_surroundings(text: str, expected: str) -> None:
    mention = on(text, BOT, "mention")
    stripped, _ = strip_mentions(text, [mention], [(mention.offset, mention.length)])
    assert stripped == expected


def test_several_mentions() -> None:
    text = "@bot @bot compare  a and b @bot"
    spans = [(m.offset, m.length) for m in (on(text, BOT, "mention", n) for n in range(3))]
    assert strip_mentions(text, [], spans)[0] == "compare  a and b"


def test_entities_move_with_the_text() -> None:
    text = "👋 @bot why is\n    x  =  1\nslow? see docs"
    entities = [
        on(text, BOT, "mention"),
        on(text, "    x  =  1", "pre", language="python"),
        on(text, "docs", "text_link", url="https://e.x"),
    ]
    mention = entities[0]
    stripped, moved = strip_mentions(text, entities, [(mention.offset, mention.length)])
    assert stripped == "👋 why is\n    x  =  1\nslow? see docs"
    assert [e.type for e in moved] == ["pre", "text_link"]  # the mention itself is gone
    assert to_markdown(stripped, moved) == (
        "👋 why is\n```python\n    x  =  1\n```\nslow? see [docs](https://e.x)"
    )
