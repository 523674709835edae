"""Prompts reach the model as written, end to end (real dispatcher and Redis, fake Bot API
and GPTalk): formatting sent as entities arrives as Markdown, mention removal leaves code
alone, and a long paste that Telegram split into several messages is one prompt."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.delivery.render import render
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

BOT = "@gptalk_test_bot"  # the fake's default bot username
GROUP_ID = -100123
SLOW = 30.0  # a merge window no assertion could wait out by accident

Json = dict[str, Any]


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def entity(text: str, part: str, kind: str, **extra: Any) -> Json:
    index = text.index(part)
    return {"type": kind, "offset": u16(text[:index]), "length": u16(part), **extra}


def paste(size: int, tag: str) -> str:
    """Lines of code, trimmed to ``size`` characters as Telegram trims every message."""
    lines = "".join(f"    {tag}_{n:04d} = compute({n}, 'x')  # step {n}\n" for n in range(size))
    text = lines[:size].strip()
    return text + "z" * (size - len(text))


# --- formatting and mentions --------------------------------------------------------------


async def test_private_formatting_reaches_the_model_as_markdown(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    code = "def f(x):\n    return  x  *  2"
    text = f"🐍 Why does f(x). fail?\n{code}\nI called f with a list, see the docs"
    entities = [
        entity(text, code, "pre", language="python"),
        {"type": "code", "offset": u16(text[: text.index(" f with")]) + 1, "length": 1},
        entity(text, "the docs", "text_link", url="https://docs.python.org/3/"),
    ]
    question = harness.say(harness.user(), text, entities=entities)
    await harness.settle()
    assert fake_gptalk.prompts == [
        "🐍 Why does f(x). fail?\n"
        f"```python\n{code}\n```\n"
        "I called `f` with a list, see [the docs](https://docs.python.org/3/)"
    ]
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_private_caption_entities_are_used(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    caption = "what does ls -la  print?"
    harness.say(
        harness.user(),
        photo=True,
        caption=caption,
        caption_entities=[entity(caption, "ls -la", "code")],
    )
    await harness.settle()
    assert fake_gptalk.prompts == ["what does `ls -la`  print?"]


async def test_group_question_with_indented_code_keeps_its_indentation(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    code = "    def f(x):\n        return  x  *  2\n\n    print(f(1))"
    text = f"{BOT} why does this fail?\n{code}"
    harness.say(ann, text, chat=group, entities=[entity(text, BOT, "mention")])
    await harness.settle()
    # A code block sent as an entity, after a mention mid-sentence: the offsets move.
    block = "def f(x):\n    return  x  *  2"
    text = f"Hey {BOT}, and  this one?\n{block}"
    entities = [entity(text, BOT, "mention"), entity(text, block, "pre", language="python")]
    harness.say(ann, text, chat=group, entities=entities)
    await harness.settle()
    assert fake_gptalk.prompts[0] == f"Ann: why does this fail?\n{code}"
    assert fake_gptalk.prompts[1].endswith(
        f"User: Ann: Hey, and  this one?\n```python\n{block}\n```\nAssistant:"
    )


# --- long pastes --------------------------------------------------------------------------


async def test_split_paste_is_one_prompt_and_one_answer(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=SLOW)
    ann = harness.user()
    first_piece, rest = paste(4096, "a"), paste(1000, "b")
    first = harness.say(ann, first_piece)
    second = harness.say(ann, rest)
    await harness.settle(within=SLOW / 2)  # the short piece ended the paste at once
    assert fake_gptalk.prompts == [f"{first_piece}\n{rest}"]
    [answer] = tg.bot_messages(ann["id"])
    assert answer.reply_to == first["message_id"]
    assert harness.answer(first) == render(fake_gptalk.answer).text
    assert harness.replies(second) == []


async def test_a_piece_that_looks_like_a_command_is_part_of_the_paste(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=SLOW)
    ann = harness.user()
    first_piece, rest = paste(4096, "a"), "/var/log/syslog: disk full"
    first = harness.say(ann, first_piece)
    harness.say(ann, rest, entities=[entity(rest, "/var", "bot_command")])
    await harness.settle(within=SLOW / 2)
    assert fake_gptalk.prompts == [f"{first_piece}\n{rest}"]
    assert [m.reply_to for m in tg.bot_messages(ann["id"])] == [first["message_id"]]


async def test_paste_of_three_pieces(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=SLOW)
    ann = harness.user()
    pieces = [paste(4000, "a"), paste(4096, "b"), paste(20, "c")]
    first = harness.say(ann, pieces[0])
    for piece in pieces[1:]:
        harness.say(ann, piece)
    await harness.settle(within=SLOW / 2)
    assert fake_gptalk.prompts == ["\n".join(pieces)]
    assert len(tg.bot_messages(ann["id"])) == 1
    assert harness.replies(first) == [render(fake_gptalk.answer).text]


async def test_short_message_is_not_delayed(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=SLOW)
    question = harness.say(
        harness.user(), "What is " + "very " * 790 + "long?"
    )  # 3963 units: just short
    await tg.wait_for(lambda: fake_gptalk.prompts != [], timeout=SLOW / 3)
    await harness.settle(within=SLOW / 3)
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_a_long_message_alone_is_answered_when_the_window_ends(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=0.3)
    ann = harness.user()
    long_one = harness.say(ann, paste(4096, "a"))
    await tg.wait_for(lambda: fake_gptalk.prompts != [], timeout=10)
    later = harness.say(ann, "and what about this?")  # after the window: a prompt of its own
    await harness.settle()
    assert len(fake_gptalk.prompts) == 2
    assert fake_gptalk.prompts[0] == paste(4096, "a")
    assert fake_gptalk.prompts[1].endswith("User: and what about this?\nAssistant:")
    assert harness.answer(long_one) == harness.answer(later) == render(fake_gptalk.answer).text


async def test_pieces_of_different_senders_are_not_merged(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.reply = lambda prompt: f"answer #{len(fake_gptalk.prompts)}"
    harness = await make_bot(merge_window=SLOW)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    ann_first = f"{BOT} {paste(4096 - len(BOT) - 1, 'a')}"
    ann_rest = paste(1000, "c")
    bob_text = f"{BOT} {paste(1000, 'b')}"
    ann_question = harness.say(
        ann, ann_first, chat=group, entities=[entity(ann_first, BOT, "mention")]
    )
    bob_question = harness.say(
        bob, bob_text, chat=group, entities=[entity(bob_text, BOT, "mention")]
    )
    # Bob's short question goes straight through while Ann's paste waits.
    await tg.wait_for(lambda: len(fake_gptalk.prompts) == 1, timeout=SLOW / 3)
    assert fake_gptalk.prompts == [f"Bob: {paste(1000, 'b')}"]
    harness.say(ann, ann_rest, chat=group)  # the rest of a paste does not mention the bot
    await harness.settle(within=SLOW / 2)
    assert len(fake_gptalk.prompts) == 2
    assert fake_gptalk.prompts[1].endswith(
        f"User: Ann: {paste(4096 - len(BOT) - 1, 'a')}\n{ann_rest}\nAssistant:"
    )
    assert harness.replies(bob_question) == ["answer #1"]
    assert harness.replies(ann_question) == ["answer #2"]
    assert len(tg.bot_messages(GROUP_ID)) == 2


async def test_unaddressed_group_messages_still_cost_nothing(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(merge_window=SLOW)
    group = tg.group_chat(GROUP_ID, "Book club")
    mark = len(tg.calls)
    harness.say(harness.user(1, "Ann"), paste(4096, "a"), chat=group)  # no mention: no paste
    harness.say(harness.user(1, "Ann"), "and the rest", chat=group)
    await harness.settle(within=SLOW / 3)
    await asyncio.sleep(0.2)
    assert [c.method for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    assert fake_gptalk.submits == 0
