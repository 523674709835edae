"""Edit to regenerate (issue 11, section 3), end to end with Redis history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from yarl import URL

from bot.storage.keys import ConversationKey
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.held_link import HeldLink, resp
from tests.scaled_bot import SCALE, last_turn, start


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


GROUP_ID = -100123
BOT = "@gptalk_test_bot"

Json = dict[str, Any]


def echo(prompt: str) -> str:
    return f"On {last_turn(prompt)}: " + "word " * 40


async def history(redis: aioredis.Redis, chat_id: int) -> list[tuple[str, str]]:
    raw = await redis.lrange(f"gptalk:history:{chat_id}", 0, -1)
    return [(t["role"], t["content"].split(":")[0]) for t in map(json.loads, raw)]


def edit(harness: BotHarness, chat: Json, user: Json, message: Json, text: str, **kw: Any) -> None:
    harness.tg.edited_message(chat, user, message["message_id"], text, **kw)
    harness.expect_pending()


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0


async def test_editing_the_last_prompt_after_its_answer_answers_anew(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    harness = await start(make_bot)
    ann = harness.user()
    chat = tg.private_chat(ann)
    harness.say(ann, "zero")
    await harness.settle()
    question = harness.say(ann, "first")
    await harness.settle()
    [old] = harness.replies(question)
    edit(harness, chat, ann, question, "second")
    await harness.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["zero", "first", "second"]
    assert fake_gptalk.prompts[-1].startswith("User: zero\nAssistant: On zero")  # context kept
    old_reply, new_reply = harness.replies(question)
    assert old_reply == old  # left as it was
    assert new_reply.startswith("On second")
    assert await history(redis, ann["id"]) == [
        ("user", "zero"), ("assistant", "On zero"), ("user", "second"), ("assistant", "On second"),
    ]  # fmt: skip
    no_rejections(tg)


async def test_editing_while_the_answer_streams_stops_it_first(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~2.5 s
    harness = await start(make_bot)
    ann = harness.user()
    chat = tg.private_chat(ann)
    question = harness.say(ann, "first")
    await tg.wait_for(lambda: bool(harness.replies(question)))
    edit(harness, chat, ann, question, "second")
    await harness.settle()
    old_reply, new_reply = harness.replies(question)
    assert old_reply.endswith("Stopped.")
    assert old_reply.count("word") < 40
    assert new_reply.startswith("On second")
    assert "Stopped" not in new_reply
    assert await history(redis, ann["id"]) == [("user", "second"), ("assistant", "On second")]
    no_rejections(tg)


async def test_editing_a_waiting_prompt_updates_it_in_place(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05
    harness = await start(make_bot)
    ann = harness.user()
    chat = tg.private_chat(ann)
    first = harness.say(ann, "first")
    await tg.wait_for(lambda: bool(harness.replies(first)))
    waiting = harness.say(ann, "secnod")
    async with asyncio.timeout(10):
        while await harness.answerer.waiting_in(ConversationKey(ann["id"])) != 1:  # noqa: ASYNC110 - the count lives in Redis
            await asyncio.sleep(0.02)
    edit(harness, chat, ann, waiting, "second")
    await harness.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["first", "second"]
    [answer] = harness.replies(waiting)
    assert answer.startswith("On second")
    assert await history(redis, ann["id"]) == [
        ("user", "first"),
        ("assistant", "On first"),
        ("user", "second"),
        ("assistant", "On second"),
    ]
    no_rejections(tg)


async def test_an_edit_that_reaches_another_replica_answers_anew(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    """Two replicas on one Redis: the prompt goes to one, its edits to the other."""
    fake_gptalk.reply = echo
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~2.5 s
    took, edited = await start(make_bot), await start(make_bot)
    ann = took.user()
    chat = tg.private_chat(ann)
    question = tg.user_message(chat, ann, "first")
    took.feed()
    await tg.wait_for(lambda: bool(took.replies(question)))
    tg.edited_message(chat, ann, question["message_id"], "second")  # while it streams
    edited.feed()
    await edited.settle()
    await took.settle()
    old_reply, new_reply = took.replies(question)
    assert old_reply.endswith("Stopped.")  # stopped in the replica that ran it
    assert new_reply.startswith("On second")
    assert await history(redis, ann["id"]) == [("user", "second"), ("assistant", "On second")]

    tg.edited_message(chat, ann, question["message_id"], "third")  # after its answer
    took.feed()  # back to the first replica, which no longer holds the prompt
    await took.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["first", "second", "third"]
    assert took.replies(question)[-1].startswith("On third")
    assert await history(redis, ann["id"]) == [("user", "third"), ("assistant", "On third")]
    # (Two long polls on one token conflict, as at Telegram: these replicas are fed.)
    assert [c.method for c in tg.calls if not c.ok and c.method != "getUpdates"] == []
    assert tg.too_many_requests == 0


async def test_editing_an_older_message_is_ignored(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.reply = echo
    harness = await start(make_bot)
    ann = harness.user()
    chat = tg.private_chat(ann)
    older = harness.say(ann, "first")
    await harness.settle()
    harness.say(ann, "second")
    await harness.settle()
    mark = len(tg.calls)
    edit(harness, chat, ann, older, "changed")
    await harness.settle()
    assert len(fake_gptalk.prompts) == 2
    assert [c.method for c in tg.calls[mark:] if c.method != "getUpdates"] == []


@pytest.mark.parametrize("edited_on", ["the replica that took it", "the other replica"])
async def test_editing_an_older_message_is_ignored_whichever_replica_took_what(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    edited_on: str,
) -> None:
    """The older prompt went to one replica, the newer to the other: the first one's
    own memory still says the older one is the asker's last."""
    fake_gptalk.reply = echo
    took, other = await start(make_bot), await start(make_bot)
    ann = took.user()
    chat = tg.private_chat(ann)
    older = tg.user_message(chat, ann, "first")
    took.feed()
    await took.settle()
    tg.user_message(chat, ann, "second")
    other.feed()
    await other.settle()
    mark = len(tg.calls)
    tg.edited_message(chat, ann, older["message_id"], "changed")
    edited = took if edited_on == "the replica that took it" else other
    edited.feed()
    await edited.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["first", "second"]
    assert [c.method for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    assert await history(redis, ann["id"]) == [
        ("user", "first"), ("assistant", "On first"),
        ("user", "second"), ("assistant", "On second"),
    ]  # fmt: skip


async def test_after_a_restart_the_last_prompt_is_still_answered_anew(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    before = await start(make_bot)
    ann = before.user()
    chat = tg.private_chat(ann)
    older = before.say(ann, "zero")
    await before.settle()
    question = before.say(ann, "first")
    await before.settle()
    await before.stop()
    after = await start(make_bot)  # a new process on the same Redis
    mark = len(tg.calls)
    edit(after, chat, ann, older, "changed")
    await after.settle()
    assert [c.method for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    edit(after, chat, ann, question, "second")
    await after.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["zero", "first", "second"]
    assert after.replies(question)[-1].startswith("On second")
    assert await history(redis, ann["id"]) == [
        ("user", "zero"), ("assistant", "On zero"), ("user", "second"), ("assistant", "On second"),
    ]  # fmt: skip
    no_rejections(tg)


async def test_an_edit_while_the_answer_is_journaled_yields_one_answer(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    """The edit lands while the journal's begin() awaits Redis: the old answer has
    started, but is not running yet."""
    fake_gptalk.reply = echo
    link = await HeldLink(URL(redis_url).port or 6379).start()
    begin = link.hold(resp("SADD", "gptalk:journal"))  # the journal's begin()
    try:
        harness = await start(make_bot, redis_url=link.url)
        try:
            ann = harness.user()
            chat = tg.private_chat(ann)
            question = harness.say(ann, "first")
            await asyncio.wait_for(begin.reached.wait(), 30)
            edit(harness, chat, ann, question, "second")
            async with asyncio.timeout(30):
                # The edit's answer waits for the old one's place: the edit was applied.
                while await harness.answerer.waiting_in(ConversationKey(ann["id"])) != 1:  # noqa: ASYNC110 - the count lives in Redis
                    await asyncio.sleep(0.02)
            begin.release()
            await harness.settle()
        finally:
            await harness.stop()  # before its link to Redis goes
    finally:
        await link.aclose()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["second"]
    [answer] = harness.replies(question)
    assert answer.startswith("On second")
    assert "Stopped" not in answer
    assert await history(redis, ann["id"]) == [("user", "second"), ("assistant", "On second")]
    assert await redis.smembers("gptalk:journal") == set()  # the skipped answer's entry too
    no_rejections(tg)


async def test_in_groups_only_an_addressed_message_is_answered_anew(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    mention = [{"type": "mention", "offset": 0, "length": len(BOT)}]
    question = harness.say(ann, f"{BOT} first", chat=group, entities=mention)
    await harness.settle()
    chatter = harness.say(ann, "just chatting", chat=group)
    await harness.settle()
    mark = len(tg.calls)
    edit(harness, group, ann, chatter, "still just chatting")  # never addressed: ignored
    await harness.settle()
    assert [c.method for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    edit(harness, group, ann, question, f"{BOT} second", entities=mention)
    await harness.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["Ann: first", "Ann: second"]
    assert await history(redis, GROUP_ID) == [("user", "Ann"), ("assistant", "On Ann")]
    assert harness.replies(question)[-1].startswith("On Ann: second")
    no_rejections(tg)
