"""Fault matrix, Telegram side: what the bot does when the Bot API misbehaves.

Real dispatcher and Redis, fake GPTalk, fake Bot API (``tests/fake_telegram.py``) with faults
injected by ``fail_next``/``block_chat``/``delete_message`` or by stopping the server. One or
more tests per failure:

1. 429 with a long ``retry_after`` on sendMessage / editMessageText
2. 400 "message to edit not found" (the user deleted the reply mid-stream)
3. 400 "message is not modified" on an edit
4. 400 "can't parse entities" on a send and on an edit
5. 403 "bot was blocked by the user", mid-stream and before the first message
6. the Bot API unreachable for 20 s
7. 502 Bad Gateway on an edit / a send
8. a gateway's HTML page instead of Bot API JSON, status codes aiogram has no class for
9. a group upgraded to a supergroup: mid-answer (the error) and by its service messages
10. no right to write: the bot restricted in a group, a closed forum topic

Telegram's clock runs ten times faster (``SCALE``), the bot's limiter likewise: a 30 s
``retry_after`` lasts 3 real seconds. ``Call.at`` is in fake seconds. The streaming editor's
back-off after a failed call (1 s, doubling up to 10 s) is real time, so the outage test takes
about 25 real seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import render, split
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import (
    BAD_GATEWAY_HTML,
    MIGRATED,
    NO_RIGHTS,
    NOT_MODIFIED,
    TOPIC_CLOSED,
    Call,
    FakeTelegram,
)

SCALE = 0.1  # fake seconds = real seconds / SCALE
RETRY_AFTER = 30  # fake seconds (3 real seconds)
OUTAGE = 20.0  # real seconds without a Bot API
ANN, BOB = 1001, 1002  # user ids = their private chat ids
GROUP, SUPERGROUP, FORUM = -4001, -1004001, -1004777
BOT = "@gptalk_test_bot"
PACED = ("sendMessage", "editMessageText")
CANT_PARSE = "Bad Request: can't parse entities: Can't find end of the entity starting at byte 0"

# A streamed answer with formatting from its first line on: ~2 s at 8 characters per 30 ms.
SLOW = "**Autumn Whispers** 🍂\n\n" + " ".join(f"_leaf_ {i} falls," for i in range(40))


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """The fake Bot API with a clock ten times faster than real time."""
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


async def start(make_bot: BotFactory) -> BotHarness:
    """The bot, with its limiter on the fake's clock."""
    return await make_bot(limits=TelegramLimits(time_scale=SCALE))


# --- helpers ----------------------------------------------------------------------------------


def shown(markdown: str) -> str:
    """The text the user sees for a (short) answer."""
    return render(markdown).text


def last_turn(prompt: str) -> str:
    """The last user turn of a prompt as GPTalk receives it."""
    return prompt.removesuffix("\nAssistant:").rsplit("\nUser: ", 1)[-1]


def answer_to(prompt: str) -> str:
    """The fake model's answer: names the question, with formatting, ~250 characters."""
    return f"**Answer to {last_turn(prompt)}:** " + " ".join(f"word{i}" for i in range(40))


def in_chat(tg: FakeTelegram, chat_id: int, methods: tuple[str, ...] = ()) -> list[Call]:
    """Calls to ``chat_id`` (only of ``methods``, when given), in order."""
    return [
        call
        for call in tg.calls
        if call.params.get("chat_id") == chat_id and (not methods or call.method in methods)
    ]


def failed(tg: FakeTelegram, chat_id: int, error_code: int) -> list[Call]:
    return [call for call in in_chat(tg, chat_id) if call.error_code == error_code]


def troubles(caplog: pytest.LogCaptureFixture, *needles: str) -> list[logging.LogRecord]:
    """WARNING and worse records (mentioning one of ``needles``, when given)."""
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and (not needles or any(needle in record.getMessage() for needle in needles))
    ]


async def first_message_shown(tg: FakeTelegram, chat_id: int) -> None:
    await tg.wait_for(lambda: bool(tg.bot_messages(chat_id)), timeout=10)


def slow_answers(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.answer = SLOW
    fake_gptalk.chunk_size, fake_gptalk.delay = 8, 0.03


# --- 1. 429 Too Many Requests -----------------------------------------------------------------


async def test_429_on_send_blocks_only_that_chat_and_its_queue_waits(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.reply = answer_to
    fake_gptalk.chunk_size, fake_gptalk.delay = 20, 0.02
    harness = await start(make_bot)
    ann, bob = harness.user(ANN, "Ann"), harness.user(BOB, "Bob")
    tg.fail_next(
        "sendMessage",
        error_code=429,
        description=f"Too Many Requests: retry after {RETRY_AFTER}",
        retry_after=RETRY_AFTER,
    )
    questions = [harness.say(ann, f"q{i}") for i in range(3)]  # 1 running, 2 waiting
    await tg.wait_for(lambda: tg.injected_errors == 1)
    [rejected] = failed(tg, ANN, 429)
    block_ends = rejected.at + RETRY_AFTER

    # Another chat is not blocked meanwhile: Bob gets his whole answer during Ann's block.
    hello = harness.say(bob, "hello")
    await tg.wait_for(lambda: harness.answer(hello) == shown(answer_to("hello")), timeout=2.5)
    assert tg.now() < block_ends

    await harness.settle(within=30)
    # Ann's chat was quiet for retry_after, then everything went out, complete and in order.
    later = [call for call in in_chat(tg, ANN) if call.at > rejected.at]
    assert [call for call in later if call.at < block_ends] == []  # no retry storm
    assert later[0].method == "sendMessage"
    assert later[0].at >= block_ends
    assert [last_turn(p) for p in fake_gptalk.prompts if "q" in last_turn(p)] == ["q0", "q1", "q2"]
    assert [harness.answer(q) for q in questions] == [shown(answer_to(f"q{i}")) for i in range(3)]
    assert [m.reply_to for m in tg.bot_messages(ANN)] == [q["message_id"] for q in questions]
    assert len(failed(tg, ANN, 429)) == 1
    assert tg.too_many_requests == 0  # and no real 429 from the fake's own limits


async def test_429_on_edit_holds_the_stream_then_sends_the_final_text(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    await first_message_shown(tg, ANN)
    tg.fail_next(
        "editMessageText",
        error_code=429,
        description=f"Too Many Requests: retry after {RETRY_AFTER}",
        retry_after=RETRY_AFTER,
    )
    await tg.wait_for(lambda: tg.injected_errors == 1)
    [rejected] = failed(tg, ANN, 429)
    assert rejected.params["text"] != shown(SLOW)  # it hit an intermediate edit
    await harness.settle(within=30)

    later = [call for call in in_chat(tg, ANN) if call.at > rejected.at]
    assert len([call for call in later if call.at < rejected.at + RETRY_AFTER]) <= 1
    edits = [call for call in later if call.method in PACED]  # usually one: text coalesced
    assert edits[0].at >= rejected.at + RETRY_AFTER
    assert all(call.ok for call in edits)
    assert harness.answer(question) == shown(SLOW)
    assert len(tg.bot_messages(ANN)) == 1


# --- 2. the user deleted the reply mid-stream -------------------------------------------------


async def test_deleted_reply_continues_in_a_new_message(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    await first_message_shown(tg, ANN)
    [gone] = tg.bot_messages(ANN)
    tg.delete_message(ANN, gone.message_id)
    await harness.settle()

    [new] = tg.bot_messages(ANN)  # deleted messages are not listed
    assert new.message_id != gone.message_id
    assert new.reply_to == question["message_id"]
    assert harness.answer(question) == shown(SLOW)  # the full answer, not only the rest
    not_found = [c for c in in_chat(tg, ANN, PACED) if "not found" in (c.description or "")]
    assert len(not_found) == 1
    assert len(tg.calls_to("sendMessage", ANN)) == 2
    assert troubles(caplog) == []


# --- 3. "message is not modified" -------------------------------------------------------------


async def test_not_modified_on_an_edit_is_silent(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    await first_message_shown(tg, ANN)
    tg.fail_next("editMessageText", error_code=400, description=NOT_MODIFIED)
    await tg.wait_for(lambda: tg.injected_errors == 1)
    [refused] = failed(tg, ANN, 400)
    assert refused.params["text"] != shown(SLOW)  # it hit an intermediate edit
    await harness.settle()

    assert [m.text for m in tg.bot_messages(ANN)] == [shown(SLOW)]
    assert harness.replies(question) == [shown(SLOW)]  # no error message to the user
    assert troubles(caplog) == []


# --- 4. "can't parse entities" ----------------------------------------------------------------


async def test_cant_parse_entities_on_send_falls_back_to_plain_text(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_answers(fake_gptalk)
    fake_gptalk.chunk_size = 24  # the first line is "**Autumn Whispers** 🍂…": formatted
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    tg.fail_next("sendMessage", error_code=400, description=CANT_PARSE)
    await harness.settle()

    [refused, plain] = tg.calls_to("sendMessage", ANN)
    assert refused.error_code == 400
    assert refused.params.get("entities")
    assert plain.ok
    assert not plain.params.get("entities")
    [message] = tg.bot_messages(ANN)
    assert message.text == shown(SLOW)  # the text is not lost
    assert message.entities == []  # the message stays plain to the end
    assert harness.answer(question) == shown(SLOW)
    assert len(troubles(caplog)) <= 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_cant_parse_entities_on_edit_falls_back_to_plain_text(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    await tg.wait_for(lambda: any(m.entities for m in tg.bot_messages(ANN)))
    tg.fail_next("editMessageText", error_code=400, description=CANT_PARSE)
    await tg.wait_for(lambda: tg.injected_errors == 1)
    await harness.settle()

    [refused] = failed(tg, ANN, 400)
    assert refused.params.get("entities")
    after = [c for c in in_chat(tg, ANN, PACED) if c.at >= refused.at and c is not refused]
    assert after
    assert all(c.ok and not c.params.get("entities") for c in after)
    [message] = tg.bot_messages(ANN)
    assert message.text == shown(SLOW)
    assert message.entities == []
    assert harness.answer(question) == shown(SLOW)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_cant_parse_entities_affects_only_that_part_of_a_long_answer(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    # Italics everywhere, so whatever a part starts with carries entities.
    fake_gptalk.answer = "\n\n".join(f"**Part {i}:** " + "lorem _ipsum_ " * 50 for i in range(8))
    fake_gptalk.chunk_size, fake_gptalk.delay = 200, 0.02
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "long please")
    await first_message_shown(tg, ANN)
    tg.fail_next("sendMessage", error_code=400, description=CANT_PARSE)  # part 2's send
    await harness.settle()

    expected = split(render(fake_gptalk.answer))
    assert len(expected) == 2
    first, second = tg.bot_messages(ANN)
    assert [first.text, second.text] == [part.text for part in expected]
    assert first.entities  # part 1 keeps its formatting
    assert second.entities == []  # part 2 fell back to plain text
    assert harness.answer(question) == "".join(part.text for part in expected)
    assert tg.injected_errors == 1


# --- 5. 403 blocked by the user ---------------------------------------------------------------


async def _blocked_user_scenario(
    harness: BotHarness,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
    *,
    mid_stream: bool,
) -> None:
    caplog.set_level(logging.INFO)
    ann, bob = harness.user(ANN, "Ann"), harness.user(BOB, "Bob")
    if not mid_stream:
        tg.block_chat(ANN)
    for i in range(4):  # 1 running + 3 waiting
        harness.say(ann, f"q{i}")
    if mid_stream:
        await first_message_shown(tg, ANN)
        tg.block_chat(ANN)
    await harness.settle()
    await asyncio.sleep(0.5)  # nothing trickles in afterwards either

    # The queued prompts are dropped: only the running one reached GPTalk.
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["q0"]
    forbidden = failed(tg, ANN, 403)
    assert forbidden
    after_first = in_chat(tg, ANN)[in_chat(tg, ANN).index(forbidden[0]) + 1 :]
    assert len(after_first) <= 2  # no retry storm
    # Logged once, briefly: no traceback, no flood.
    reports = troubles(caplog, str(ANN), "403", "Forbidden", "blocked")
    assert 1 <= len(reports) <= 2
    assert [r for r in caplog.records if r.exc_info] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    # The process keeps working for everybody else.
    hello = harness.say(bob, "hello")
    await harness.settle()
    assert harness.answer(hello) == shown(answer_to("hello"))
    assert harness.tracker.errors == []


async def test_403_mid_stream_drops_the_conversation_quietly(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gptalk.reply = lambda prompt: SLOW if "q" in last_turn(prompt) else answer_to(prompt)
    fake_gptalk.chunk_size, fake_gptalk.delay = 8, 0.03
    fake_gptalk.login_delay = 0.3  # the queue is full before the first answer starts
    harness = await start(make_bot)
    await _blocked_user_scenario(harness, tg, fake_gptalk, caplog, mid_stream=True)
    [partial] = tg.bot_messages(ANN)
    assert partial.text != shown(SLOW)  # the rest could not be delivered, of course


async def test_403_before_the_first_message_drops_the_conversation_quietly(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gptalk.reply = answer_to
    fake_gptalk.login_delay = 0.3  # the queue is full before the first answer starts
    harness = await start(make_bot)
    await _blocked_user_scenario(harness, tg, fake_gptalk, caplog, mid_stream=False)
    assert tg.bot_messages(ANN) == []


# --- 6. the Bot API unreachable ---------------------------------------------------------------


async def test_bot_api_outage_polling_resumes_and_the_answer_completes(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    fake_gptalk.reply = lambda prompt: SLOW if last_turn(prompt) == "a poem" else answer_to(prompt)
    fake_gptalk.chunk_size, fake_gptalk.delay = 8, 0.03
    harness = await start(make_bot)
    ann, bob = harness.user(ANN, "Ann"), harness.user(BOB, "Bob")
    poem = harness.say(ann, "a poem")
    await first_message_shown(tg, ANN)
    port = int(tg.url.rsplit(":", 1)[1])

    await tg.close()
    await asyncio.sleep(OUTAGE)
    assert harness.answer(poem) != shown(SLOW)  # the final text is still owed
    await tg.start(port=port)
    back = time.monotonic()

    hello = harness.say(bob, "hello")
    await harness.settle(within=30)
    assert harness.answer(hello) == shown(answer_to("hello"))  # polling resumed by itself
    assert harness.answer(poem) == shown(SLOW)  # the interrupted answer was completed
    assert len(tg.bot_messages(ANN)) == 1
    assert time.monotonic() - back < 15
    assert harness.tracker.errors == []
    assert harness._polling is not None
    assert not harness._polling.done()
    assert tg.token not in caplog.text  # aiohttp errors must not leak the URL's token
    assert [r for r in caplog.records if r.exc_info] == []  # no tracebacks
    # Back-off, not a flood: the editor retries after 1, 2, 4, 8, 10 s (aiogram's polling
    # logs each of its own attempts too, ~2 records per 1-5 s: not counted here).
    ours = [r for r in troubles(caplog) if r.name.split(".")[0] in ("bot", "gptalk")]
    assert 1 <= len(ours) <= 8


# --- 7. 5xx from the Bot API ------------------------------------------------------------------


@pytest.mark.parametrize("method", PACED)
async def test_bad_gateway_mid_stream_is_retried(
    method: str, make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    if method == "editMessageText":
        await first_message_shown(tg, ANN)
    tg.fail_next(method, error_code=502, description="Bad Gateway")
    await tg.wait_for(lambda: tg.injected_errors == 1)
    await harness.settle()

    [bad] = failed(tg, ANN, 502)
    calls = in_chat(tg, ANN, PACED)
    retry = calls[calls.index(bad) + 1]
    assert retry.ok
    assert retry.at - bad.at >= 1.0 / SCALE * 0.9  # backed off ~1 real second
    assert harness.answer(question) == shown(SLOW)
    assert len(tg.bot_messages(ANN)) == 1  # no duplicate message


# --- 8. a gateway's page, unknown status codes ------------------------------------------------


@pytest.mark.parametrize("method", PACED)
async def test_html_bad_gateway_mid_stream_is_retried(
    method: str,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    if method == "editMessageText":
        await first_message_shown(tg, ANN)
    tg.fail_next(method, error_code=502, description="Bad Gateway", html=BAD_GATEWAY_HTML)
    await tg.wait_for(lambda: tg.injected_errors == 1)
    await harness.settle()

    [bad] = failed(tg, ANN, 502)
    calls = in_chat(tg, ANN, PACED)
    assert calls[calls.index(bad) + 1].ok
    assert harness.answer(question) == shown(SLOW)
    assert harness.replies(question) == [shown(SLOW)]  # no "something went wrong"
    assert len(troubles(caplog, str(ANN))) == 1  # the failed call, briefly
    assert "<html>" not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    ("code", "description"),
    [(418, "I'm a teapot"), (409, "Conflict: what now"), (401, "Unauthorized")],
)
async def test_unknown_errors_mid_stream_are_retried(
    code: int,
    description: str,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_answers(fake_gptalk)
    harness = await start(make_bot)
    question = harness.say(harness.user(ANN, "Ann"), "a poem")
    await first_message_shown(tg, ANN)
    tg.fail_next("editMessageText", error_code=code, description=description, times=2)
    await tg.wait_for(lambda: tg.injected_errors == 2)
    await harness.settle()

    assert len(failed(tg, ANN, code)) == 2
    assert harness.answer(question) == shown(SLOW)
    assert harness.replies(question) == [shown(SLOW)]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- 9. a group upgraded to a supergroup ------------------------------------------------------


def mention(
    harness: BotHarness, chat: dict[str, Any], user: dict[str, Any], text: str, **kw: Any
) -> dict[str, Any]:
    """``user`` writes ``@bot text`` in ``chat``."""
    entity = {"type": "mention", "offset": 0, "length": len(BOT)}
    return harness.say(user, f"{BOT} {text}", chat=chat, entities=[entity], **kw)


async def stored(redis: aioredis.Redis, chat_id: int, thread_id: int | None = None) -> list[str]:
    """The conversation's history as ``role: content`` lines."""
    key = f"gptalk:history:{chat_id}" + ("" if thread_id is None else f":{thread_id}")
    items = [json.loads(item) for item in await redis.lrange(key, 0, -1)]
    return [f"{item['role']}: {item['content']}" for item in items]


def poem_or_answer(prompt: str) -> str:
    return SLOW if "a poem" in last_turn(prompt) else answer_to(prompt)


async def test_group_migrated_mid_answer_continues_in_the_supergroup(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gptalk.reply = poem_or_answer
    fake_gptalk.chunk_size, fake_gptalk.delay = 8, 0.03
    harness = await start(make_bot)
    ann = harness.user(ANN, "Ann")
    group = tg.group_chat(GROUP, "Team", supergroup=False)
    mention(harness, group, ann, "q0")
    await harness.settle()
    mention(harness, group, ann, "a poem")
    await tg.wait_for(lambda: len(tg.bot_messages(GROUP)) == 2)
    # Upgraded while the poem streams; the service messages are left out so that only
    # the refused call tells the bot.
    supergroup = tg.migrate_group(GROUP, SUPERGROUP, user=ann, service_messages=False)
    await harness.settle()

    assert [c.description for c in in_chat(tg, GROUP) if not c.ok] == [MIGRATED]
    [continued] = tg.bot_messages(SUPERGROUP)
    assert continued.text == shown(SLOW)  # the whole answer, not only what came after
    assert continued.reply_to is None  # the question is in the old chat
    assert tg.bot_messages(GROUP)[1].text != shown(SLOW)
    assert await stored(redis, GROUP) == []
    assert await stored(redis, SUPERGROUP) == [
        "user: Ann: q0",
        f"assistant: {answer_to('Ann: q0')}",
        "user: Ann: a poem",
        f"assistant: {SLOW}",
    ]

    # The conversation goes on in the supergroup.
    after = mention(harness, supergroup, ann, "and now?")
    await harness.settle()
    assert "Ann: q0" in fake_gptalk.prompts[-1]
    assert "Ann: a poem" in fake_gptalk.prompts[-1]
    assert harness.answer(after) == shown(answer_to("Ann: and now?"))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert harness.tracker.errors == []


async def test_group_migration_service_messages_move_the_history(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = answer_to
    # Only Ann may talk to the bot; Bob, who upgrades the group, may not: the service
    # messages count all the same.
    harness = await make_bot(
        limits=TelegramLimits(time_scale=SCALE), allowed_user_ids=frozenset({ANN})
    )
    ann, bob = harness.user(ANN, "Ann"), harness.user(BOB, "Bob")
    group = tg.group_chat(GROUP, "Team", supergroup=False)
    mention(harness, group, ann, "q0")
    await harness.settle()
    supergroup = tg.migrate_group(GROUP, SUPERGROUP, user=bob)
    harness.expect_pending()
    await harness.settle()

    assert await stored(redis, GROUP) == []
    assert await stored(redis, SUPERGROUP) == [
        "user: Ann: q0",
        f"assistant: {answer_to('Ann: q0')}",
    ]
    mention(harness, supergroup, ann, "q1")
    await harness.settle()
    assert "Ann: q0" in fake_gptalk.prompts[-1]
    assert len(await stored(redis, SUPERGROUP)) == 4
    assert [c for c in tg.calls if not c.ok] == []  # the old chat was never tried


# --- 10. no right to write --------------------------------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture, where: str) -> list[logging.LogRecord]:
    return [r for r in troubles(caplog) if where in r.getMessage()]


async def test_restricted_bot_stops_answering_until_its_rights_are_back(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gptalk.reply = answer_to
    fake_gptalk.login_delay = 0.3  # the queue is full before the first answer starts
    harness = await start(make_bot)
    ann, bob = harness.user(ANN, "Ann"), harness.user(BOB, "Bob")
    group = tg.group_chat(-100900, "Team")
    tg.restrict_bot(group["id"])  # Telegram tells the bot only later (or never)
    for i in range(3):  # one running, two waiting
        mention(harness, group, ann, f"q{i}")
    await harness.settle()

    assert [last_turn(p) for p in fake_gptalk.prompts] == ["Ann: q0"]  # the queue was dropped
    assert [c.description for c in in_chat(tg, group["id"], PACED)] == [NO_RIGHTS]
    [warning] = refusals(caplog, str(group["id"]))
    assert warning.levelno == logging.WARNING
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await stored(redis, group["id"]) == ["user: Ann: q0"]  # no answer nobody saw

    # Later prompts cost nothing at all, from anybody.
    mark = len(tg.calls)
    mention(harness, group, bob, "q3")
    await harness.settle()
    assert len(fake_gptalk.prompts) == 1
    assert [c for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    assert len(refusals(caplog, str(group["id"]))) == 1

    # An admin gives the right back: the bot answers again.
    tg.unrestrict_bot(group["id"])
    tg.bot_member_changed(group, "restricted", "member", user=bob)
    harness.expect_pending()
    await harness.settle()
    back = mention(harness, group, bob, "q4")
    await harness.settle()
    assert harness.answer(back) == shown(answer_to("Bob: q4"))
    assert len(fake_gptalk.prompts) == 2

    # Told first this time: not a single GPTalk request or send.
    tg.restrict_bot(group["id"])
    tg.bot_member_changed(group, "member", "restricted", user=bob)
    harness.expect_pending()
    await harness.settle()
    mark = len(tg.calls)
    mention(harness, group, bob, "q5")
    await harness.settle()
    assert len(fake_gptalk.prompts) == 2
    assert [c for c in tg.calls[mark:] if c.method != "getUpdates"] == []
    assert harness.tracker.errors == []


async def test_closed_topic_stops_answering_there_until_reopened(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gptalk.reply = answer_to
    fake_gptalk.login_delay = 0.3
    harness = await start(make_bot)
    ann = harness.user(ANN, "Ann")
    forum = tg.group_chat(FORUM, "Forum", forum=True)
    closed, open_ = tg.forum_topic(forum, "Closed", user=ann), tg.forum_topic(forum, "Open")
    harness.expect_pending()
    tg.close_topic(FORUM, closed)

    def ask(thread: int, text: str) -> dict[str, Any]:
        return mention(harness, forum, ann, text, thread_id=thread, is_topic_message=True)

    for i in range(3):
        ask(closed, f"q{i}")
    await harness.settle()
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["Ann: q0"]
    assert [c.description for c in in_chat(tg, FORUM, PACED)] == [TOPIC_CLOSED]
    assert len(refusals(caplog, f"{FORUM}:{closed}")) == 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await stored(redis, FORUM, closed) == ["user: Ann: q0"]

    elsewhere = ask(open_, "q3")  # other topics are not affected
    again = ask(closed, "q4")
    await harness.settle()
    assert harness.answer(elsewhere) == shown(answer_to("Ann: q3"))
    assert [last_turn(p) for p in fake_gptalk.prompts] == ["Ann: q0", "Ann: q3"]
    assert harness.replies(again) == []

    tg.reopen_topic(forum, closed, user=ann)
    harness.expect_pending()
    await harness.settle()
    reopened = ask(closed, "q5")
    await harness.settle()
    assert harness.answer(reopened) == shown(answer_to("Ann: q5"))
    assert len(refusals(caplog, f"{FORUM}:{closed}")) == 1
    assert harness.tracker.errors == []


async def test_a_user_who_blocked_the_bot_is_answered_when_they_write_again(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.reply = answer_to
    harness = await start(make_bot)
    ann = harness.user(ANN, "Ann")
    tg.bot_member_changed(tg.private_chat(ann), "member", "kicked", user=ann)
    harness.expect_pending()
    await harness.settle()
    # Writing to a bot unblocks it; its "member" update may be handled after the message.
    hello = harness.say(ann, "hello")
    await harness.settle()
    assert harness.answer(hello) == shown(answer_to("hello"))
