"""The Stop button under streaming answers, end to end (issue 11, section 1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import render
from bot.i18n.en import EN
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

SCALE = 0.1
ENDED, NOT_YOURS = EN.stop_stale, EN.stop_not_yours
STOP_BUTTON, STOPPING = EN.stop_button, EN.stop_done
GROUP_ID = -100123
BOT = "@gptalk_test_bot"

Json = dict[str, Any]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


async def start(make_bot: BotFactory, **settings: Any) -> BotHarness:
    return await make_bot(limits=TelegramLimits(time_scale=SCALE), **settings)


def slow(fake_gptalk: FakeGPTalk, words: int = 80) -> None:
    fake_gptalk.answer = "word " * words
    fake_gptalk.chunk_size, fake_gptalk.delay = max(10, words // 8), 0.05  # ~2 s


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0


def keyboards_left(tg: FakeTelegram, chat_id: int) -> list[int]:
    return [m.message_id for m in tg.bot_messages(chat_id) if m.reply_markup is not None]


async def first_part_with_button(harness: BotHarness, question: Json) -> Any:
    tg, chat_id = harness.tg, question["chat"]["id"]

    def found() -> Any:
        return next(
            (
                m
                for m in tg.bot_messages(chat_id)
                if m.reply_to == question["message_id"] and m.reply_markup is not None
            ),
            None,
        )

    await tg.wait_for(lambda: found() is not None)
    return found()


def mention(harness: BotHarness, group: Json, user: Json, text: str) -> Json:
    entity = {"type": "mention", "offset": 0, "length": len(BOT)}
    return harness.say(user, f"{BOT} {text}", chat=group, entities=[entity])


async def test_the_asker_stops_the_answer_with_the_button(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    slow(fake_gptalk)
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    message = await first_part_with_button(harness, question)
    [[button]] = message.reply_markup["inline_keyboard"]
    assert button["text"] == STOP_BUTTON
    assert len(button["callback_data"].encode()) <= 64
    query = tg.press_button(ann, ann["id"], message.message_id)
    harness.expect_pending()
    await harness.settle()
    stopped = harness.answer(question)
    assert stopped.endswith("Stopped.")
    assert 0 < stopped.count("word") < 80
    assert tg.callback_answers[query]["text"] == STOPPING
    assert keyboards_left(tg, ann["id"]) == []
    [*_, last] = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert last["role"] == "assistant"
    assert last["content"].endswith("⏹ _Stopped._")
    no_rejections(tg)


async def test_a_bystander_cannot_stop_it_and_an_admin_can(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    slow(fake_gptalk)
    harness = await start(make_bot, admin_ids=frozenset({9}))
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob, dee, boss = (
        harness.user(i, n) for i, n in [(1, "Ann"), (2, "Bob"), (4, "Dee"), (9, "Boss")]
    )
    first = mention(harness, group, ann, "talk")
    second = mention(harness, group, bob, "talk")
    anns = await first_part_with_button(harness, first)
    bobs = await first_part_with_button(harness, second)
    refused = tg.press_button(dee, GROUP_ID, anns.message_id)
    by_admin = tg.press_button(boss, GROUP_ID, bobs.message_id)
    harness.expect_pending()
    await harness.settle()
    assert tg.callback_answers[refused]["text"] == NOT_YOURS
    assert tg.callback_answers[by_admin]["text"] == STOPPING
    assert harness.answer(first) == render(fake_gptalk.answer).text  # went on
    assert harness.answer(second).endswith("Stopped.")
    assert keyboards_left(tg, GROUP_ID) == []
    no_rejections(tg)


async def test_stale_and_forged_presses_are_refused_politely(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    slow(fake_gptalk, words=30)
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    message = await first_part_with_button(harness, question)
    data = message.reply_markup["inline_keyboard"][0][0]["callback_data"]
    await harness.settle()
    assert message.reply_markup is None  # the final edit took it off
    stale = tg.press_button(ann, ann["id"], message.message_id, data=data)
    forged = tg.press_button(ann, ann["id"], message.message_id, data="stop:AAAAAAAAAAAAAAAAAAAAAA")
    junk = tg.press_button(ann, ann["id"], message.message_id, data="something else")
    harness.expect_pending()
    await harness.settle()
    for query in (stale, forged, junk):  # every query answered: no spinning clients
        assert tg.callback_answers[query]["text"] == ENDED
    assert harness.answer(question) == render(fake_gptalk.answer).text
    no_rejections(tg)


@pytest.mark.parametrize("ending", ["normal", "long", "error", "/stop", "empty", "quiet end"])
async def test_no_message_keeps_the_button(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, ending: str
) -> None:
    slow(fake_gptalk, words=1200 if ending == "long" else 80)  # "long": two messages
    if ending == "error":
        fake_gptalk.fail("stream", cut_after=8)
    if ending == "empty":
        fake_gptalk.answer = ""
    if ending == "quiet end":  # all the text shown, then silence before the end: the
        fake_gptalk.fail("stream", stall=1.0, after=10_000)  # final edit has the same text
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    if ending == "/stop":
        await first_part_with_button(harness, question)
        harness.say(ann, "/stop")
    await harness.settle()
    text = harness.answer(question)
    assert text
    if ending == "long":
        assert len(tg.bot_messages(ann["id"])) == 2
        sent = [c for c in tg.calls_to("sendMessage") if c.ok]
        assert all("reply_markup" in c.params for c in sent)  # the newest carries it
    if ending == "error":
        assert "⚠️" in text
    if ending == "/stop":
        assert text.endswith("Stopped.")
    if ending == "quiet end":
        [message] = tg.bot_messages(ann["id"])
        assert message.history[-1] == message.history[-2]
    assert keyboards_left(tg, ann["id"]) == []
    no_rejections(tg)


async def stream_and_count(harness: BotHarness, user: Json) -> int:
    tg = harness.tg
    mark = len(tg.calls)
    harness.say(user, "count")
    await harness.settle()
    quiet = ("getUpdates", "sendChatAction")
    return sum(1 for c in tg.calls[mark:] if c.method not in quiet)


async def test_the_button_costs_no_extra_call(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    # An edit interval of 1 real second and text every 0.45 s: the first message,
    # one intermediate edit (at 1 s) and the final edit (at 2 s, the stream ended at
    # 1.35 s) whatever the machine's load, with the button or without.
    fake_gptalk.answer = "".join(f"Sentence number {i} of the answer. " for i in range(4))
    fake_gptalk.chunk_size, fake_gptalk.delay = 34, 0.45
    harness = await make_bot(limits=TelegramLimits(time_scale=SCALE, edit_interval=10.0))
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    with_button = await stream_and_count(harness, ann)
    assert "reply_markup" in tg.calls_to("sendMessage", ann["id"])[0].params
    harness.answerer.stop_button = None
    without = await stream_and_count(harness, bob)
    assert not any("reply_markup" in c.params for c in tg.calls_to("sendMessage", bob["id"]))
    assert with_button == without == 3
    assert keyboards_left(tg, ann["id"]) == []
    no_rejections(tg)


async def test_pressing_twice_stops_once(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    slow(fake_gptalk)
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    message = await first_part_with_button(harness, question)
    queries = [tg.press_button(ann, ann["id"], message.message_id) for _ in range(2)]
    harness.expect_pending()
    await harness.settle()
    await asyncio.sleep(0)
    answers = sorted(tg.callback_answers[q]["text"] for q in queries)
    assert answers == sorted([STOPPING, ENDED])
    assert harness.answer(question).count("Stopped.") == 1
    no_rejections(tg)
