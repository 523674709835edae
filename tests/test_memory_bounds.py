"""Memory mode over weeks: the in-process stores hold only what is still alive.

Without ``REDIS_URL`` the bot keeps history, ``USER_RATE_LIMIT`` windows and the
"you were offline" notices in process memory. Each of them must forget an entry once
it has expired, and doing so must cost O(1) amortized per write: the work is counted
by the expiry structure (entries examined), not timed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message as TgMessage
from aiogram.types import TelegramObject

from bot.i18n.en import EN
from bot.middlewares.stale import StaleMessageMiddleware
from bot.storage.expiry import ExpiringMap
from bot.storage.history import MemoryHistoryStore
from bot.storage.keys import ConversationKey
from bot.storage.user_limits import MemoryUserLimits, Verdict
from gptalk import Message
from tests.fake_telegram import FakeTelegram

CONVERSATIONS = 50_000


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def turn(text: str) -> Message:
    return Message(role="user", content=text)


# --- the expiry structure -------------------------------------------------------------------


def test_entries_expire_ttl_after_their_last_write() -> None:
    clock = Clock()
    entries: ExpiringMap[str, int] = ExpiringMap(10, clock=clock)
    entries.put("a", 1)
    clock.now += 6
    entries.put("b", 2)
    entries.put("a", 3)  # a rewrite restarts its life
    clock.now += 6
    assert entries.get("a") == 3
    assert entries.get("b") == 2
    clock.now += 4
    assert entries.get("a") is None
    assert "b" not in entries
    assert len(entries) == 0  # reading an expired entry drops it


def test_reading_does_not_extend_a_life() -> None:
    clock = Clock()
    entries: ExpiringMap[str, int] = ExpiringMap(10, clock=clock)
    entries.put("a", 1)
    for _ in range(9):
        clock.now += 1
        assert entries.get("a") == 1
    clock.now += 1
    assert entries.get("a") is None


def test_a_write_drops_every_expired_entry_and_keeps_the_live_ones() -> None:
    clock = Clock()
    entries: ExpiringMap[int, int] = ExpiringMap(100, clock=clock)
    for key in range(1000):
        entries.put(key, key)
    clock.now += 50
    for key in range(1000, 1010):
        entries.put(key, key)
    clock.now += 50  # the first 1000 have expired, the next 10 not yet
    entries.put(-1, -1)
    assert len(entries) == 11
    assert [entries.get(key) for key in range(1000, 1010)] == list(range(1000, 1010))


def test_a_mass_expiry_costs_no_more_than_the_writes_that_made_it() -> None:
    clock = Clock()
    entries: ExpiringMap[int, None] = ExpiringMap(3600, clock=clock)
    writes = 0
    for key in range(20_000):
        entries.put(key, None)
        writes += 1
    clock.now += 7200  # everything expires while nothing is written
    for key in range(20_000, 20_100):
        entries.put(key, None)
        writes += 1
    assert len(entries) == 100
    # Each write looks at one live entry at most, plus each expired entry once.
    assert entries.examined <= 2 * writes


# --- history ----------------------------------------------------------------------------------


async def test_history_holds_only_conversations_written_within_the_ttl() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=3600, clock=clock)
    # 50k conversations over ~35 simulated days: a new one every minute, and a few
    # regulars who keep talking.
    writes = 0
    largest = 0
    for n in range(CONVERSATIONS):
        clock.now += 60
        await store.append(ConversationKey(n), turn(f"hello {n}"))
        await store.append(ConversationKey(-(n % 7) - 1, n % 3), turn(f"again {n}"))
        writes += 2
        largest = max(largest, len(store._data))
    # At most one new conversation per minute lives an hour, plus the 21 regulars.
    assert largest <= 3600 // 60 + 1 + 21
    assert await store.load(ConversationKey(0)) == []
    assert await store.load(ConversationKey(CONVERSATIONS - 1)) == [
        turn(f"hello {CONVERSATIONS - 1}")
    ]
    assert store._data.examined <= 2 * writes


async def test_expired_conversations_are_gone_after_any_write() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=3600, clock=clock)
    for n in range(5000):
        await store.append(ConversationKey(n), turn("hi"))
    assert len(store._data) == 5000
    clock.now += 3600
    await store.append(ConversationKey(-1), turn("the only one left"))
    assert len(store._data) == 1


async def test_history_writes_examine_a_bounded_number_of_entries() -> None:
    # 50k live conversations (nothing expires): the old sweep scanned all of them
    # on every write past 10k.
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=7 * 86400, clock=clock)
    for n in range(CONVERSATIONS):
        clock.now += 1
        await store.append(ConversationKey(n), turn("hi"))
    before = store._data.examined
    for n in range(1000):
        clock.now += 1
        await store.append(ConversationKey(n * 37), turn("more"))
        assert await store.pop_answer(ConversationKey(n * 37)) is None
    assert store._data.examined - before <= 1000


# --- USER_RATE_LIMIT windows --------------------------------------------------------------------


async def test_user_limits_forget_users_a_window_after_their_last_prompt() -> None:
    clock = Clock()
    limits = MemoryUserLimits(3, 60.0, clock=clock)
    hits = 0
    largest = 0
    for n in range(CONVERSATIONS):
        clock.now += 0.5
        assert (await limits.hit(n)).verdict is Verdict.ALLOW
        hits += 1
        largest = max(largest, len(limits._users))
    assert largest <= 60 / 0.5 + 1
    assert limits._users.examined <= 2 * hits


async def test_a_flooding_user_is_forgotten_once_the_window_passes() -> None:
    clock = Clock()
    limits = MemoryUserLimits(2, 60.0, clock=clock)
    verdicts = [(await limits.hit(7)).verdict for _ in range(5)]
    allow, notify, ignore = Verdict.ALLOW, Verdict.NOTIFY, Verdict.IGNORE
    assert verdicts == [allow, allow, notify, ignore, ignore]
    clock.now += 60
    assert (await limits.hit(8)).verdict is Verdict.ALLOW
    assert len(limits._users) == 1  # user 7 and the notice given to them are gone
    assert (await limits.hit(7)).verdict is Verdict.ALLOW


# --- "you were offline" notices -----------------------------------------------------------------


@pytest.fixture
async def bot() -> AsyncIterator[tuple[FakeTelegram, Bot]]:
    async with FakeTelegram(enforce_limits=False) as tg:
        session = AiohttpSession(api=TelegramAPIServer.from_base(tg.url))
        bot = Bot(tg.token, session=session)
        try:
            yield tg, bot
        finally:
            await bot.session.close()


async def test_stale_notices_are_remembered_only_for_max_age(
    bot: tuple[FakeTelegram, Bot],
) -> None:
    tg, client = bot
    clock = Clock()
    stale = StaleMessageMiddleware(max_age=60, clock=clock)
    handled: list[TelegramObject] = []

    async def handler(event: TelegramObject, data: dict[str, Any]) -> None:
        handled.append(event)

    def old_message(user_id: int) -> TgMessage:
        user = tg.add_user(user_id, f"User {user_id}")
        raw = tg.user_message(tg.private_chat(user), user, "are you there?", date=1)
        return TgMessage.model_validate(raw, context={"bot": client})

    largest = 0
    for user_id in range(1, 1001):
        clock.now += 1
        await stale(handler, old_message(user_id), {"texts": EN})
        largest = max(largest, len(stale._told))
    assert handled == []
    assert len(tg.bot_messages(1)) == 1  # each chat was told once
    assert largest <= 61
    # The same chat's backlog is told once per max_age, not once per message.
    await stale(handler, old_message(1000), {"texts": EN})
    assert len(tg.bot_messages(1000)) == 1
    clock.now += 60
    await stale(handler, old_message(1000), {"texts": EN})
    assert len(tg.bot_messages(1000)) == 2
