"""A crash leaves no half-written answer behind.

The sweeper against the strict fake Bot API (real aiogram, real Redis), the
answerer's journal bookkeeping through the whole bot, and ``kill -9`` of a real
``python -m bot`` process followed by a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiogram import Bot
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.delivery.budgets import MemoryBudgets, Priority, TelegramLimits
from bot.delivery.journal import Entry, Journal, MemoryJournal, MemorySpace, RedisJournal
from bot.delivery.recovery import MAX_TRIES, Recovery, with_marker
from bot.delivery.render import Rendered, render
from bot.delivery.scheduler import Scheduler
from bot.i18n.en import EN
from bot.i18n.ru import RU
from bot.storage.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore
from bot.storage.keys import ConversationKey, Keys
from gptalk import Message
from tests.bot_process import bot_env, start_bot
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import BAD_GATEWAY_HTML, NO_RIGHTS, TOPIC_CLOSED, FakeTelegram
from tests.telegram_harness import make_bot as make_aiogram_bot

LEASE = 0.6
INTERRUPTED = EN.interrupted_restart
MARKER = render(INTERRUPTED).text  # "⚠️ Interrupted: the bot restarted. Send /retry."
KEYS = Keys("gptalk")


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    scheduler = Scheduler(MemoryBudgets(TelegramLimits()))
    async with make_aiogram_bot(tg, scheduler) as bot:
        yield bot
    await scheduler.aclose()


@pytest.fixture
def history(redis: aioredis.Redis) -> RedisHistoryStore:
    return RedisHistoryStore(redis, KEYS, max_messages=20, ttl=3600)


@pytest.fixture
async def journals(redis: aioredis.Redis) -> AsyncIterator[list[RedisJournal]]:
    made: list[RedisJournal] = []
    yield made
    for journal in made:
        await journal.aclose()


async def journal(redis: aioredis.Redis, made: list[RedisJournal], owner: str) -> RedisJournal:
    result = RedisJournal(redis, KEYS, owner=owner, lease=LEASE)
    await result.open()
    made.append(result)
    return result


async def another_replica(
    bot: Bot, redis: aioredis.Redis, journals: list[RedisJournal], history: RedisHistoryStore
) -> Recovery:
    """A live replica's recovery, to sweep by hand."""
    return Recovery(bot, await journal(redis, journals, "h:2"), history, interval=1)


def crash(journal: RedisJournal) -> None:
    """The process dies: its lease is no longer renewed, nor given up."""
    assert journal._renewal is not None
    journal._renewal.cancel()


@dataclasses.dataclass
class Backend:
    """A deployment's journals (one store: a process's memory, or the Redis) and history."""

    journal: Callable[[str], Awaitable[Journal]]  # opened, by owner
    history: HistoryStore


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis: aioredis.Redis) -> AsyncIterator[Backend]:
    space = MemorySpace()
    made: list[Journal] = []

    async def open_journal(owner: str) -> Journal:
        journal: Journal
        if request.param == "memory":
            journal = MemoryJournal(owner=owner, lease=LEASE, space=space)
        else:
            journal = RedisJournal(redis, KEYS, owner=owner, lease=LEASE)
        await journal.open()
        made.append(journal)
        return journal

    history: HistoryStore = (
        MemoryHistoryStore(max_messages=20, ttl=3600)
        if request.param == "memory"
        else RedisHistoryStore(redis, KEYS, max_messages=20, ttl=3600)
    )
    yield Backend(open_journal, history)
    for journal in made:
        await journal.aclose()


async def half_written(
    tg: FakeTelegram,
    bot: Bot,
    history: HistoryStore,
    writer: Journal,
    markdown: str = "Autumn **leaves** fall and",
    *,
    keyboard: bool = False,
    group: int | None = None,
) -> tuple[Entry, dict[str, Any], Rendered]:
    """A question (in a private chat, or in ``group``), and an answer that began
    streaming (journaled by ``writer``)."""
    user = tg.add_user(1001, "Ann")
    chat = tg.private_chat(user) if group is None else tg.group_chat(group, "Readers")
    question = tg.user_message(chat, user, "Write about autumn")
    conversation = ConversationKey(chat["id"])
    await history.append(conversation, Message(role="user", content="Write about autumn"))
    shown = render(markdown)
    stop = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="⏹", callback_data="s")]]
    )
    sent = await bot.send_message(
        chat["id"],
        shown.text,
        entities=shown.aiogram_entities(),
        reply_to_message_id=question["message_id"],
        reply_markup=stop if keyboard else None,
    )
    entry = Entry.new(
        conversation, reply_to=question["message_id"], question="Write about autumn", language="en"
    )
    await writer.begin(entry)
    entry = Entry(
        id=entry.id,
        conversation=conversation,
        reply_to=entry.reply_to,
        question=entry.question,
        language="en",
        message_ids=(sent.message_id,),
        markdown=markdown,
        last=shown,
    )
    await writer.update(entry)
    return entry, question, shown


async def test_the_marker_is_in_the_askers_language(
    tg: FakeTelegram,
    bot: Bot,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
) -> None:
    dead = await journal(redis, journals, "host:1")
    entry, _question, shown = await half_written(tg, bot, history, dead, keyboard=False)
    await dead.update(dataclasses.replace(entry, language="ru-RU"))
    sweeper = await journal(redis, journals, "host:2")
    recovery = Recovery(bot, sweeper, history, interval=LEASE, default_language="en")
    crash(dead)
    await asyncio.sleep(LEASE * 1.5)
    assert await recovery.sweep() == 1
    [message] = tg.bot_messages(1001)
    assert message.text == f"{shown.text}\n\n{render(RU.interrupted_restart).text}"
    turns = await history.load(ConversationKey(1001))
    assert turns[-1]["content"] == entry.markdown + RU.interrupted_restart


async def journal_keys(redis: aioredis.Redis) -> list[str]:
    return sorted(k.decode() for k in await redis.keys("gptalk:journal*"))


async def test_a_dead_owners_answer_is_marked_and_recorded(
    tg: FakeTelegram,
    bot: Bot,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
) -> None:
    dead = await journal(redis, journals, "host:1")
    entry, _question, shown = await half_written(tg, bot, history, dead, keyboard=True)
    [message] = tg.bot_messages(1001)
    assert message.reply_markup is not None
    sweeper = await journal(redis, journals, "host:2")
    recovery = Recovery(bot, sweeper, history, interval=LEASE)

    assert await recovery.sweep() == 0  # the writer is alive
    crash(dead)
    await asyncio.sleep(LEASE * 1.5)
    assert await recovery.sweep() == 1

    expected = with_marker(shown, INTERRUPTED)
    assert message.text == f"{shown.text}\n\n{MARKER}"
    assert message.text == expected.text
    marker_at = len(shown.text) + 2
    assert {"type": "italic", "offset": marker_at + 3, "length": len(MARKER) - 3} in [
        {k: e[k] for k in ("type", "offset", "length")} for e in message.entities
    ]  # "⚠️ " is 3 UTF-16 units; the rest is italic, as the bot's other markers
    assert {e["type"] for e in message.entities} == {"bold", "italic"}
    assert message.reply_markup is None  # a Stop button would be gone
    turns = await history.load(ConversationKey(1001))
    assert turns[-1] == {"role": "assistant", "content": entry.markdown + INTERRUPTED}
    assert await journal_keys(redis) == []
    assert await recovery.sweep() == 0
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []


async def test_a_live_owners_answer_is_not_touched_by_another_processs_sweep(
    tg: FakeTelegram,
    bot: Bot,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
) -> None:
    alive = await journal(redis, journals, "replica-a:1")
    entry, _question, shown = await half_written(tg, bot, history, alive)
    other = Recovery(bot, await journal(redis, journals, "replica-b:1"), history, interval=0.1)
    await other.start()
    try:
        await asyncio.sleep(LEASE * 4)  # many sweeps, several lease periods
    finally:
        await other.stop()
    [message] = tg.bot_messages(1001)
    assert message.text == shown.text
    assert message.edits == 0
    assert (await history.load(ConversationKey(1001)))[-1]["role"] == "user"
    assert await journal_keys(redis) == ["gptalk:journal", f"gptalk:journal:{entry.id}"]


async def test_nothing_shown_yet_gets_the_marker_as_a_reply(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
) -> None:
    dead = await journal(redis, journals, "host:1")
    user = tg.add_user(1001, "Ann")
    question = tg.user_message(tg.private_chat(user), user, "hi")
    await history.append(ConversationKey(1001), Message(role="user", content="hi"))
    await dead.begin(
        Entry.new(ConversationKey(1001), reply_to=question["message_id"], question="hi")
    )
    await dead.aclose()  # a graceful stop leaves it orphaned at once
    sweeper = await another_replica(bot, redis, journals, history)
    assert await sweeper.sweep()
    [notice] = tg.bot_messages(1001)
    assert notice.text == MARKER
    assert notice.reply_to == question["message_id"]
    turns = await history.load(ConversationKey(1001))
    assert turns[-1] == {"role": "assistant", "content": INTERRUPTED}


async def test_a_full_last_message_gets_the_marker_in_a_new_one(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
) -> None:
    dead = await journal(redis, journals, "host:1")
    _entry, _question, shown = await half_written(tg, bot, history, dead, "word " * 810)
    await dead.aclose()
    sweeper = await another_replica(bot, redis, journals, history)
    assert await sweeper.sweep()
    first, notice = tg.bot_messages(1001)
    assert first.text == shown.text
    assert notice.text == MARKER
    assert notice.reply_to == first.message_id


async def test_a_deleted_message_or_a_moved_on_history_is_handled_quietly(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = await journal(redis, journals, "host:1")
    entry, _question, _shown = await half_written(tg, bot, history, dead)
    tg.delete_message(1001, entry.message_ids[0])
    # Meanwhile the user started a new conversation (/new) and asked something else.
    await history.clear(ConversationKey(1001))
    await history.append(ConversationKey(1001), Message(role="user", content="and winter?"))
    await dead.aclose()
    with caplog.at_level(logging.INFO, logger="bot.delivery.recovery"):
        sweeper = await another_replica(bot, redis, journals, history)
        assert await sweeper.sweep() == 1
    assert "deleted" in caplog.text
    assert "history moved on" in caplog.text
    assert tg.bot_messages(1001) == []
    turns = await history.load(ConversationKey(1001))
    assert turns == [{"role": "user", "content": "and winter?"}]  # nothing put anywhere
    assert await journal_keys(redis) == []


async def test_a_prompt_that_started_before_the_sweep_keeps_its_place_after_the_answer(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
) -> None:
    """With replicas, the next prompt may take the dead one's lapsed lease a moment
    before a sweep marks its answer: the answer still goes right after its question."""
    dead = await journal(redis, journals, "host:1")
    entry, _question, _shown = await half_written(tg, bot, history, dead)
    later = [Message(role="user", content="and winter?"), Message(role="assistant", content="Snow")]
    await history.append(ConversationKey(1001), *later)
    await dead.aclose()
    sweeper = await another_replica(bot, redis, journals, history)
    assert await sweeper.sweep() == 1
    assert await history.load(ConversationKey(1001)) == [
        {"role": "user", "content": "Write about autumn"},
        {"role": "assistant", "content": entry.markdown + INTERRUPTED},
        *later,
    ]


async def test_telegram_failing_leaves_the_answer_for_the_next_sweep(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
) -> None:
    dead = await journal(redis, journals, "host:1")
    _entry, _question, shown = await half_written(tg, bot, history, dead)
    await dead.aclose()
    sweeper = await another_replica(bot, redis, journals, history)
    tg.fail_next("editMessageText", error_code=500, description="Internal Server Error")
    assert await sweeper.sweep() == 0
    [message] = tg.bot_messages(1001)
    assert message.text == shown.text
    assert await sweeper.sweep() == 1
    assert message.text.endswith(MARKER)
    assert len(await history.load(ConversationKey(1001))) == 2  # recorded once


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and worse; none may carry a traceback."""
    found = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in found if r.exc_info] == []
    return [r.getMessage() for r in found]


async def nothing_left(backend: Backend) -> bool:
    """No entry waits for a sweep (nor is held by a live process: there is none)."""
    return await (await backend.journal("host:9")).orphans() == []


async def test_a_proxys_error_page_leaves_the_marker_to_a_later_sweep(
    tg: FakeTelegram, bot: Bot, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy in front of the Bot API answers the marker's edit with its HTML 502
    page (aiogram's ClientDecodeError): the sweeps go on, and the next one marks it."""
    dead = await backend.journal("host:1")
    entry, _question, shown = await half_written(tg, bot, backend.history, dead)
    await dead.aclose()
    [message] = tg.bot_messages(1001)
    tg.fail_next(
        "editMessageText", error_code=502, description="Bad Gateway", html=BAD_GATEWAY_HTML
    )
    recovery = Recovery(bot, await backend.journal("host:2"), backend.history, interval=0.05)
    with caplog.at_level(logging.INFO):
        await recovery.start()
        try:
            await tg.wait_for(lambda: message.text.endswith(MARKER), timeout=20)
        finally:
            await recovery.stop()
    assert message.text == f"{shown.text}\n\n{MARKER}"
    assert [c.ok for c in tg.calls_to("editMessageText")] == [False, True]
    [warning] = warnings_in(caplog)
    assert "interrupted answer in chat 1001 not marked yet (unreadable response" in warning
    assert "<html>" not in caplog.text
    turns = await backend.history.load(ConversationKey(1001))
    assert turns[1:] == [{"role": "assistant", "content": entry.markdown + INTERRUPTED}]
    assert await nothing_left(backend)


async def test_the_marker_waits_for_a_slot_in_a_group_whose_budget_answers_spent(
    backend: Backend,
) -> None:
    """The marker is an answer's last word: in a group whose calls of the minute went
    to answers, it waits for the window to move on, not dropped like chatter that gets
    no slot within 5 s. Telegram's clock runs 20 times faster here."""
    scale, group = 0.05, -100777
    grants: list[Priority] = []
    async with FakeTelegram(time_scale=scale) as fast:
        scheduler = Scheduler(
            MemoryBudgets(TelegramLimits(time_scale=scale)),
            on_grant=lambda priority, _waited: grants.append(priority),
        )
        try:
            async with make_aiogram_bot(fast, scheduler) as fast_bot:
                dead = await backend.journal("host:1")
                entry, _question, shown = await half_written(
                    fast, fast_bot, backend.history, dead, group=group
                )
                with Scheduler.calls_as(Priority.ANSWER):  # the group's other answers
                    for n in range(TelegramLimits().group_limit - 1):
                        await fast_bot.send_message(group, f"answer {n}")
                await dead.aclose()
                sweeper = Recovery(
                    fast_bot, await backend.journal("host:2"), backend.history, interval=1
                )
                assert await sweeper.sweep() == 1
        finally:
            await scheduler.aclose()
        message = fast.message(group, entry.message_ids[0])
        assert message.text == f"{shown.text}\n\n{MARKER}"
        assert grants[-1] is Priority.ANSWER
        [marked] = fast.calls_to("editMessageText")
        first = fast.calls_to("sendMessage")[0]
        assert marked.at - first.at >= fast.group_window  # it did wait for the window
        assert fast.too_many_requests == 0
    turns = await backend.history.load(ConversationKey(group))
    assert turns[1:] == [{"role": "assistant", "content": entry.markdown + INTERRUPTED}]
    assert await nothing_left(backend)


async def test_a_marker_telegram_keeps_failing_is_tried_less_often_then_given_up(
    tg: FakeTelegram, bot: Bot, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram answers every marker edit with a 500: each failed try is followed by a
    longer wait (the next sweep, then 1, 2, 4… sweep intervals), and after MAX_TRIES
    the answer is ended unmarked, with its marker in the history for the model."""
    dead = await backend.journal("host:1")
    entry, _question, shown = await half_written(tg, bot, backend.history, dead)
    await dead.aclose()
    [message] = tg.bot_messages(1001)
    tg.fail_next(
        "editMessageText",
        error_code=500,
        description="Internal Server Error",
        times=MAX_TRIES + 5,
    )
    interval = 0.02
    recovery = Recovery(bot, await backend.journal("host:2"), backend.history, interval=interval)
    with caplog.at_level(logging.WARNING, logger="bot.delivery.recovery"):
        await recovery.start()
        try:
            await tg.wait_for(
                lambda: "giving up" in caplog.text or message.text.endswith(MARKER), timeout=60
            )
        finally:
            await recovery.stop()
    tries = [c.at for c in tg.calls_to("editMessageText")]
    assert len(tries) == MAX_TRIES
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    waits = [interval * 2**n for n in range(MAX_TRIES - 2)]  # after the 2nd failure on
    assert all(gap >= wait for gap, wait in zip(gaps[1:], waits, strict=True)), gaps
    warnings = warnings_in(caplog)
    assert len(warnings) == MAX_TRIES
    assert all("not marked yet (Telegram server says" in w for w in warnings[:-1]), warnings
    assert f"not marked after {MAX_TRIES} tries" in warnings[-1]
    assert message.text == shown.text
    turns = await backend.history.load(ConversationKey(1001))
    assert turns[1:] == [{"role": "assistant", "content": entry.markdown + INTERRUPTED}]
    assert await nothing_left(backend)


@pytest.mark.parametrize("refusal", ["Bad Request: chat not found", NO_RIGHTS, TOPIC_CLOSED])
async def test_a_chat_the_marker_cannot_reach_ends_the_answer_without_asking_again(
    tg: FakeTelegram,
    redis: aioredis.Redis,
    history: RedisHistoryStore,
    journals: list[RedisJournal],
    bot: Bot,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
) -> None:
    dead = await journal(redis, journals, "host:1")
    entry, _question, shown = await half_written(tg, bot, history, dead)
    await dead.aclose()
    [message] = tg.bot_messages(1001)
    tg.fail_next("editMessageText", error_code=400, description=refusal, times=2)
    sweeper = await another_replica(bot, redis, journals, history)
    with caplog.at_level(logging.INFO, logger="bot.delivery.recovery"):
        assert await sweeper.sweep() == 1
    assert [c.description for c in tg.calls_to("editMessageText")] == [refusal]  # not in plain
    assert message.text == shown.text
    assert "chat unavailable" in caplog.text
    assert warnings_in(caplog) == []
    turns = await history.load(ConversationKey(1001))
    assert turns[1:] == [{"role": "assistant", "content": entry.markdown + INTERRUPTED}]
    assert await journal_keys(redis) == []


# --- the answerer keeps the journal ---------------------------------------------------------


async def entries(redis: aioredis.Redis) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for raw_id in await redis.smembers("gptalk:journal"):
        held = await redis.hgetall(f"gptalk:journal:{raw_id.decode()}")
        found.append((held[b"owner"].decode(), json.loads(held[b"entry"])))
    return found


async def test_an_answer_is_journaled_while_it_streams_and_forgotten_when_done(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "A **slow** answer, " + "word " * 40
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1
    harness = await make_bot()
    ann = harness.user()
    ann["language_code"] = "de"
    question = harness.say(ann, "tell me")
    await tg.wait_for(lambda: any(m.edits for m in tg.bot_messages(ann["id"])), timeout=15)
    message = tg.bot_messages(ann["id"])[0]

    async def shown_is_journaled() -> bool:
        [(owner, entry)] = await entries(redis)
        assert owner == harness.app.journal.owner  # type: ignore[union-attr]
        return entry["message_ids"] == [message.message_id] and entry["text"] in message.history

    for _ in range(100):
        if await shown_is_journaled():
            break
        await asyncio.sleep(0.05)
    [(_owner, entry)] = await entries(redis)
    assert entry["reply_to"] == question["message_id"]
    assert entry["language"] == "de"
    assert entry["markdown"].startswith("A **slow** answer")
    await harness.settle()
    assert await entries(redis) == []
    assert await redis.keys("gptalk:journal*") == []


async def test_an_answer_to_a_chat_that_blocked_the_bot_is_forgotten(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "word " * 60
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1
    harness = await make_bot()
    ann = harness.user()
    harness.say(ann, "tell me")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])), timeout=15)
    tg.block_chat(ann["id"])
    await harness.settle()
    assert await redis.keys("gptalk:journal*") == []


async def test_new_erases_the_conversations_entries(
    make_bot: BotFactory,
    tg: FakeTelegram,
    redis: aioredis.Redis,
    journals: list[RedisJournal],
) -> None:
    harness = await make_bot()
    ann = harness.user()
    other = harness.user(2002, "Bob")
    dead = RedisJournal(redis, KEYS, owner="dead:1", lease=60)
    await dead.open()
    journals.append(dead)
    mine = Entry.new(ConversationKey(ann["id"]), reply_to=1, question="q")
    bobs = Entry.new(ConversationKey(other["id"]), reply_to=1, question="q")
    await dead.begin(mine)
    await dead.begin(bobs)
    harness.say(ann, "/new")
    await harness.settle()
    assert [e["chat_id"] for _o, e in await entries(redis)] == [other["id"]]


# --- kill -9 of a real process --------------------------------------------------------------


async def test_kill_9_mid_answer_then_restart_marks_the_answer_interrupted(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    lease = 2.0
    fake_gptalk.answer = "A **long** story. " + "word " * 300
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.2  # ~30 s: it is cut well before the end
    env = bot_env(tg, fake_gptalk, REDIS_URL=redis_url, JOURNAL_LEASE=str(lease))
    procs: list[asyncio.subprocess.Process] = []
    try:
        first = await start_bot(env, tmp_path)
        procs.append(first)
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=30)
        user = tg.add_user(42, "Ann")
        question = tg.user_message(tg.private_chat(user), user, "tell me a story")
        await tg.wait_for(lambda: any(m.edits for m in tg.bot_messages(42)), timeout=30)
        [message] = tg.bot_messages(42)
        for _ in range(100):  # the journal has caught up with the screen
            if [e["text"] for _o, e in await entries(redis)] == [message.text]:
                break
            await asyncio.sleep(0.01)
        first.kill()  # SIGKILL: no shutdown hook runs
        await first.wait()
        killed = time.monotonic()
        assert first.returncode == -signal.SIGKILL
        cut = message.text
        assert not cut.endswith(MARKER)
        assert len(await entries(redis)) == 1

        started = time.monotonic()
        started_fake = tg.now()
        second = await start_bot(env, tmp_path)
        procs.append(second)
        await tg.wait_for(lambda: message.text.endswith(MARKER), timeout=lease * 3 + 30)
        marked = time.monotonic()

        assert message.text[: -len(MARKER)].rstrip() in message.history[:-1]
        assert message.text == f"{cut}\n\n{MARKER}" or len(message.history) > 2
        assert message.reply_markup is None
        for _ in range(200):  # the edit first, then the history, then the journal
            if not await redis.keys("gptalk:journal*"):
                break
            await asyncio.sleep(0.01)
        raw = await redis.lrange("gptalk:history:42", 0, -1)
        turns = [json.loads(item) for item in raw]
        assert turns[0] == {"role": "user", "content": "tell me a story", "asker": 42}
        assert turns[-1]["role"] == "assistant"
        assert turns[-1]["asker"] == 42
        assert turns[-1]["content"].startswith("A **long** story.")
        assert turns[-1]["content"].endswith(INTERRUPTED)
        assert await redis.keys("gptalk:journal*") == []
        assert tg.visible_text(42, question["message_id"]) == message.text
        # The restarted process's first Bot API call (getMe) is where its imports end.
        up = min(c.at for c in tg.calls_to("getMe") if c.at >= started_fake)
        [edit] = [c.at for c in tg.calls_to("editMessageText") if MARKER in c.params["text"]]
        print(
            f"\nrecovery: marker {marked - started:.2f} s after the restart "
            f"({edit - up:.2f} s after its first Bot API call), {marked - killed:.2f} s after "
            f"the kill; lease {lease} s, sweep every {lease / 3:.2f} s"
        )

        second.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 0, err.decode()
        assert "ending an answer in chat 42" in err.decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
