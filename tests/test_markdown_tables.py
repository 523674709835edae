"""Markdown Telegram cannot show: tables become aligned monospace, raw HTML stays text."""

from __future__ import annotations

from bot.delivery.render import render
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

TABLE = (
    "Prices:\n\n"
    "| fruit | price |\n"
    "|---|---:|\n"
    "| apple | 1 |\n"
    "| dragon fruit | 12.50 |\n\n"
    "That is all."
)


def columns(line: str) -> list[int]:
    """Where the column separators are in one line of a drawn table."""
    return [i for i, char in enumerate(line) if char in "|+"]


def test_a_table_is_an_aligned_monospace_block() -> None:
    rendered = render(TABLE)
    [pre] = [e for e in rendered.entities if e.type == "pre"]
    block = rendered.text[pre.offset : pre.offset + pre.length]  # ASCII: units = indices
    lines = block.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert "|" not in rendered.text.replace(block, "")  # no pipe soup outside the block
    assert len({tuple(columns(line)) for line in lines}) == 1  # one separator column
    assert "dragon fruit" in lines[3]
    assert "12.50" in lines[3]


def test_raw_html_is_shown_as_text() -> None:
    assert render("Use List<String> here.").text == "Use List<String> here."
    assert render("a <b>bold</b> claim").text == "a <b>bold</b> claim"
    assert render("<div>\nhi <i>there</i>\n</div>").text == "<div>\nhi <i>there</i>\n</div>"
    assert render("x <!-- note --> y").text == "x <!-- note --> y"
    assert render("| type |\n|---|\n| List<String> |").text.endswith("List<String>")


def test_what_is_not_html_is_untouched() -> None:
    code = render("Use `List<String>` or:\n\n```java\nList<String> xs;\n```")
    assert code.text == "Use List<String> or:\n\nList<String> xs;"
    assert [e.type for e in code.entities] == ["code", "pre"]
    link = render("<https://example.com>")
    assert link.text == "https://example.com"
    assert link.entities[0].type == "text_link"
    assert render("a < b and c > d").text == "a < b and c > d"
    assert render(r"already \<escaped>").text == "already <escaped>"


async def test_the_final_message_shows_the_table_and_the_tags(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = TABLE + "\n\nIn Java: List<String> names;"
    fake_gptalk.chunk_size, fake_gptalk.delay = 7, 0.02  # the table arrives row by row
    harness = await make_bot()
    ann = harness.user()
    question = harness.say(ann, "prices?")
    await harness.settle()
    [message] = tg.bot_messages(ann["id"])
    assert message.text == render(fake_gptalk.answer).text
    assert harness.answer(question).endswith("In Java: List<String> names;")
    [pre] = [e for e in message.entities if e["type"] == "pre"]
    block = message.text[pre["offset"] : pre["offset"] + pre["length"]]
    assert len({tuple(columns(line)) for line in block.splitlines()}) == 1
    assert "dragon fruit" in block
