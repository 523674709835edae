"""One contract for both budgets backends: the same calls get the same verdicts.

The clock is injected (Telegram seconds), so the Redis script is checked against
:class:`MemoryBudgets` step by step without waiting for real windows.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from bot.delivery.budgets import (
    FLIGHT_LAPSE,
    FLIGHT_RECHECK,
    Budgets,
    MemoryBudgets,
    Priority,
    Scope,
    TelegramLimits,
    Verdict,
)
from bot.delivery.redis_budgets import RedisBudgets
from bot.storage.keys import Keys

ANSWER, CHATTER, EDIT = Priority.ANSWER, Priority.CHATTER, Priority.EDIT
PRIVATE, GROUP = 1, -100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., Budgets]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest, clock: Clock, redis: aioredis.Redis) -> Make:
    """Budgets of the parametrized backend on ``clock``; keyword arguments are limits."""

    def factory(**overrides: float) -> Budgets:
        limits = TelegramLimits(**overrides)  # type: ignore[arg-type]
        if request.param == "memory":
            return MemoryBudgets(limits, clock=clock)
        return RedisBudgets(redis, Keys("gptalk"), limits, clock=clock)

    return factory


@pytest.fixture
def clock() -> Clock:
    return Clock()


def granted(verdict: Verdict) -> bool:
    return verdict.wait == 0 and verdict.scope is None


def short(verdict: Verdict, scope: Scope, wait: float) -> bool:
    return verdict.scope is scope and verdict.wait == pytest.approx(wait, abs=1e-6)


async def called(budgets: Budgets, chat_id: int, priority: Priority = ANSWER) -> Verdict:
    """A call granted and answered at once (settled at the grant's time)."""
    verdict = await budgets.take(chat_id, priority)
    if verdict.ticket is not None:
        await budgets.settle(verdict.ticket)
    return verdict


async def test_private_chat_token_bucket(make: Make, clock: Clock) -> None:
    budgets = make()
    assert granted(await budgets.take(PRIVATE, ANSWER))
    assert granted(await budgets.take(PRIVATE, ANSWER))  # burst 2
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 1.0)
    clock.now += 0.25
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 0.75)
    clock.now += 0.75
    assert granted(await budgets.take(PRIVATE, ANSWER))
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 1.0)
    clock.now += 10  # refilled to the burst, not beyond
    assert granted(await budgets.take(PRIVATE, ANSWER))
    assert granted(await budgets.take(PRIVATE, ANSWER))
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 1.0)
    assert granted(await budgets.take(PRIVATE + 1, ANSWER))  # another chat, its own bucket


async def test_group_sliding_window(make: Make, clock: Clock) -> None:
    budgets = make()
    start = clock.now
    for _ in range(20):
        assert granted(await budgets.take(GROUP, ANSWER))
        clock.now += 1.0
    clock.now = start + 19.5
    # the call at `start` leaves the 61 s window at start + 61
    assert short(await budgets.take(GROUP, ANSWER), Scope.CHAT, 41.5)
    clock.now = start + 61.0
    assert granted(await budgets.take(GROUP, ANSWER))
    assert short(await budgets.take(GROUP, ANSWER), Scope.CHAT, 1.0)  # the call at +1 next
    assert granted(await budgets.take(GROUP - 1, ANSWER))


async def test_bot_wide_window_and_who_is_short(make: Make, clock: Clock) -> None:
    budgets = make()
    start = clock.now
    for chat_id in [10, *range(10, 37)]:  # 28 calls, chat 10's burst spent
        assert granted(await called(budgets, chat_id))
        clock.now += 0.01
    assert short(await budgets.take(50, ANSWER), Scope.BOT, start + 1.0 - clock.now)
    # a chat that is short itself is told so first: other chats may still go sooner
    assert short(await budgets.take(10, ANSWER), Scope.CHAT, start + 1.0 - clock.now)
    clock.now = start + 1.0
    assert granted(await called(budgets, 50))  # the first call left the window
    assert short(await budgets.take(51, ANSWER), Scope.BOT, 0.01)


async def test_a_call_counts_from_its_answer_and_in_flight_till_then(
    make: Make, clock: Clock
) -> None:
    budgets = make(global_limit=3)
    start = clock.now
    flying = [await budgets.take(chat_id, ANSWER) for chat_id in (1, 2, 3)]
    assert all(granted(verdict) and verdict.ticket for verdict in flying)
    # Only calls in flight fill the window: their answers free it, so look again soon.
    assert short(await budgets.take(4, ANSWER), Scope.BOT, FLIGHT_RECHECK)
    clock.now = start + 5  # a stalled loop: the calls left late, answered now
    tickets = [verdict.ticket or "" for verdict in flying]
    await budgets.settle(tickets[0])
    await budgets.settle(tickets[1])
    assert short(await budgets.take(4, ANSWER), Scope.BOT, 1.0)  # 2 answered + 1 in flight
    clock.now = start + 5.5
    await budgets.settle(tickets[0])  # settling again changes nothing
    await budgets.settle(tickets[2])
    # Counted from the answers (start + 5), not the grants (start): a full window.
    assert short(await budgets.take(4, ANSWER), Scope.BOT, 0.5)
    clock.now = start + 6
    assert granted(await budgets.take(4, ANSWER))
    assert granted(await budgets.take(5, ANSWER))
    assert short(await budgets.take(6, ANSWER), Scope.BOT, 0.5)  # the answer at + 5.5
    clock.now = start + 6.5
    assert granted(await budgets.take(6, ANSWER))
    assert short(await budgets.take(7, ANSWER), Scope.BOT, FLIGHT_RECHECK)
    # Calls never settled (their process died) count as answered FLIGHT_LAPSE after
    # their grant: 4 and 5 (granted at + 6) have left the window, 6 (+ 6.5) has not.
    clock.now = start + 6 + FLIGHT_LAPSE + 1.0
    assert granted(await budgets.take(7, ANSWER))
    assert granted(await budgets.take(8, ANSWER))
    assert short(await budgets.take(9, ANSWER), Scope.BOT, 0.5)


async def test_reserves_per_priority_in_a_group(make: Make) -> None:
    budgets = make()
    for _ in range(17):
        assert granted(await budgets.take(GROUP, ANSWER))
    # 3 slots left: an edit must leave 3, chatter 1, an answer none
    assert (await budgets.take(GROUP, EDIT)).scope is Scope.CHAT
    assert granted(await budgets.take(GROUP, CHATTER))
    assert granted(await budgets.take(GROUP, CHATTER))
    assert (await budgets.take(GROUP, CHATTER)).scope is Scope.CHAT
    assert granted(await budgets.take(GROUP, ANSWER))
    assert (await budgets.take(GROUP, ANSWER)).scope is Scope.CHAT


async def test_reserves_per_priority_bot_wide(make: Make) -> None:
    budgets = make()
    for chat_id in range(10, 32):  # 22 of 28
        assert granted(await budgets.take(chat_id, ANSWER))
    assert (await budgets.take(100, EDIT)).scope is Scope.BOT  # edits leave 6
    for chat_id in range(101, 105):
        assert granted(await budgets.take(chat_id, CHATTER))  # chatter leaves 2
    assert (await budgets.take(105, CHATTER)).scope is Scope.BOT
    assert granted(await budgets.take(106, ANSWER))
    assert granted(await budgets.take(107, ANSWER))
    assert (await budgets.take(108, ANSWER)).scope is Scope.BOT


async def test_private_edit_leaves_a_token(make: Make, clock: Clock) -> None:
    budgets = make(edit_interval=0.1)
    assert granted(await budgets.take(PRIVATE, CHATTER))
    # one token left, an edit must leave one: it waits for the second
    assert short(await budgets.take(PRIVATE, EDIT), Scope.CHAT, 1.0)
    assert granted(await budgets.take(PRIVATE, ANSWER))
    clock.now += 2.0
    assert granted(await budgets.take(PRIVATE, EDIT))


async def test_block_holds_the_chat_only_and_never_shortens(make: Make, clock: Clock) -> None:
    budgets = make()
    await budgets.block(PRIVATE, 5.0)
    await budgets.block(PRIVATE, 2.0)  # a shorter block does not end the longer one
    for priority in Priority:
        assert short(await budgets.take(PRIVATE, priority), Scope.CHAT, 5.0)
    assert granted(await budgets.take(PRIVATE + 1, ANSWER))
    clock.now += 4.0
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 1.0)
    await budgets.block(PRIVATE, 3.0)  # a longer one extends it
    assert short(await budgets.take(PRIVATE, ANSWER), Scope.CHAT, 3.0)
    clock.now += 3.0
    assert granted(await budgets.take(PRIVATE, ANSWER))


async def test_edit_interval_follows_answer_and_edit_calls_not_chatter(
    make: Make, clock: Clock
) -> None:
    budgets = make()  # a group: 3 s between an answer call and the next edit
    start = clock.now
    assert granted(await budgets.take(GROUP, ANSWER))
    clock.now = start + 1.0
    assert short(await budgets.take(GROUP, EDIT), Scope.CHAT, 2.0)
    assert granted(await budgets.take(GROUP, CHATTER))
    clock.now = start + 2.0
    assert short(await budgets.take(GROUP, EDIT), Scope.CHAT, 1.0)  # chatter did not count
    clock.now = start + 3.0
    assert granted(await budgets.take(GROUP, EDIT))
    clock.now = start + 4.0
    assert short(await budgets.take(GROUP, EDIT), Scope.CHAT, 2.0)  # an edit counts
    assert granted(await budgets.take(GROUP, ANSWER))  # answers keep no interval
    assert short(await budgets.take(GROUP, EDIT), Scope.CHAT, 3.0)


async def test_a_call_that_is_refused_is_not_counted(make: Make, clock: Clock) -> None:
    budgets = make(global_limit=3)
    for chat_id in (1, 2, 3):
        assert granted(await called(budgets, chat_id))
    for _ in range(5):
        assert (await budgets.take(4, ANSWER)).scope is Scope.BOT
    clock.now += 1.0
    assert granted(await called(budgets, 4))
    assert granted(await called(budgets, 4))  # its bucket was not drained by refusals
