"""The bot-wide scheduler and the in-process budgets, on a fast clock (time_scale)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response, TelegramType

from bot.delivery.budgets import (
    MemoryBudgets,
    Priority,
    Scope,
    SlidingWindow,
    TelegramLimits,
    TokenBucket,
    Verdict,
)
from bot.delivery.scheduler import ChatterDroppedError, Scheduler
from tests.fake_telegram import FakeTelegram
from tests.telegram_harness import make_bot

SCALE = 0.01  # 1 Telegram second = 10 ms


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    sched = make()
    yield sched
    await sched.aclose()


def make(**overrides: float) -> Scheduler:
    return Scheduler(MemoryBudgets(TelegramLimits(time_scale=SCALE, **overrides)))  # type: ignore[arg-type]


def test_token_bucket_math() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=0.0)
    assert bucket.wait(0.0, 3) == 0
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.wait(0.0, 1) == pytest.approx(1.0)
    assert bucket.wait(0.5, 2) == pytest.approx(1.5)
    assert not bucket.idle(2.0)
    assert bucket.idle(3.0)


def test_sliding_window_math() -> None:
    window = SlidingWindow(limit=3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        window.take(t)
    assert window.wait(30.0, 1) == pytest.approx(30.0)  # the call at 0 leaves at 60
    assert window.wait(30.0, 2) == pytest.approx(40.0)
    assert window.wait(60.0, 1) == 0
    assert window.idle(80.0)


def call(budgets: MemoryBudgets, chat_id: int, priority: Priority = Priority.ANSWER) -> Verdict:
    """A call granted and answered at once."""
    verdict = budgets.check(chat_id, priority)
    if verdict.ticket is not None:
        budgets.settle_now(verdict.ticket)
    return verdict


def test_budgets_say_who_is_short() -> None:
    now = [0.0]
    budgets = MemoryBudgets(TelegramLimits(global_limit=3), clock=lambda: now[0])
    assert call(budgets, 1).wait == 0
    assert call(budgets, 1).wait == 0
    assert call(budgets, 1).scope is Scope.CHAT  # burst 2 spent
    assert call(budgets, 2).wait == 0
    short = call(budgets, 3)
    assert short.scope is Scope.BOT
    assert short.wait == pytest.approx(1.0)


async def grant_times(
    sched: Scheduler, chat_id: int, count: int, priority: Priority
) -> list[float]:
    times = []
    for _ in range(count):
        await sched.acquire(chat_id, priority)
        times.append(sched.budgets.now())
    return times


async def test_private_chat_keeps_its_rate(scheduler: Scheduler) -> None:
    times = await grant_times(scheduler, 1, 8, Priority.ANSWER)
    assert times[1] - times[0] < 0.5  # the burst
    # the bucket invariant: n calls in any interval need burst + rate × its length
    burst, rate = scheduler.limits.private_burst, scheduler.limits.private_rate
    for i, start in enumerate(times):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6


async def test_group_never_exceeds_its_window() -> None:
    sched = make(group_window=6.0)  # 20 per 6 Telegram seconds, to keep the test short
    times = await grant_times(sched, -100, 45, Priority.ANSWER)
    await sched.aclose()
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + 6.0]
        assert len(inside) <= 20


async def test_no_rolling_second_holds_more_than_30_calls_bot_wide(scheduler: Scheduler) -> None:
    times: list[float] = []

    async def one(chat_id: int) -> None:
        await scheduler.acquire(chat_id, Priority.ANSWER)
        times.append(scheduler.budgets.now())

    await asyncio.gather(*(one(1000 + i) for i in range(150)))
    times.sort()
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + 1.0]
        assert len(inside) <= 28  # our limit, under Telegram's 30
    assert times[-1] - times[0] >= (150 - 28) / 28 * 1.0 - 0.2


async def test_edits_keep_interval_and_reserve() -> None:
    sched = make(edit_interval=2.0)
    times = await grant_times(sched, 7, 4, Priority.EDIT)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= 1.95
    # the reserve: right after an edit, an answer's call still goes through at once
    before = sched.budgets.now()
    await sched.acquire(7, Priority.ANSWER)
    assert sched.budgets.now() - before < 0.5
    await sched.aclose()


async def test_answers_then_chatter_then_edits(scheduler: Scheduler) -> None:
    await scheduler.block(3, 2.0)  # everything below queues up behind the block
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await scheduler.acquire(3, priority)
        order.append(name)

    tasks = []
    for name, priority in [
        ("edit", Priority.EDIT),
        ("chatter1", Priority.CHATTER),
        ("answer1", Priority.ANSWER),
        ("chatter2", Priority.CHATTER),
        ("answer2", Priority.ANSWER),
    ]:
        tasks.append(asyncio.create_task(take(name, priority)))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["answer1", "answer2", "chatter1", "chatter2", "edit"]


async def test_chatter_has_a_share_edits_cannot_take() -> None:
    # A group whose window has room for exactly the chatter reserve: an edit must
    # leave 3 slots, chatter 1, so chatter goes and the edit waits.
    sched = make(group_window=1000.0)
    for _ in range(17):
        await sched.acquire(-5, Priority.ANSWER)
    edit = asyncio.create_task(sched.acquire(-5, Priority.EDIT))
    await asyncio.wait_for(sched.acquire(-5, Priority.CHATTER), 1)
    await asyncio.sleep(0.05)
    assert not edit.done()
    edit.cancel()
    await sched.aclose()


async def test_a_waiting_edit_promoted_to_answer_goes_at_once() -> None:
    sched = make(edit_interval=1000.0)  # an edit would wait "forever"
    await sched.acquire(4, Priority.EDIT)
    request = sched.request(4, Priority.EDIT)
    await asyncio.sleep(0.05)
    assert not request.done
    request.promote(Priority.ANSWER)
    await asyncio.wait_for(sched.wait(request), 1)
    await sched.aclose()


async def test_a_call_holds_its_slot_until_it_is_settled(scheduler: Scheduler) -> None:
    held = [scheduler.request(100 + i, Priority.ANSWER) for i in range(28)]
    for request in held:
        await scheduler.wait(request)  # granted, not settled: the calls are in flight
    late = asyncio.create_task(scheduler.acquire(200))
    await asyncio.sleep(5 * SCALE)  # 5 Telegram seconds: long past any window
    assert not late.done()
    await scheduler.settle(held[0])
    await scheduler.settle(held[0])  # twice is once
    await asyncio.wait_for(late, 1.5 * SCALE * 2 + 0.5)  # one window after the answer
    for request in held[1:]:
        await scheduler.settle(request)


async def test_calls_that_leave_late_still_keep_the_bot_wide_limit() -> None:
    """A stalled event loop holds granted calls back, then they leave together with
    the next ones. Counted from their answers, they cannot crowd a second at Telegram."""
    scale = 0.2

    class LeaveLate(BaseRequestMiddleware):
        """The first calls, once granted, reach Telegram a Telegram second late."""

        def __init__(self, count: int) -> None:
            self.count = count

        async def __call__(
            self,
            make_request: NextRequestMiddlewareType[TelegramType],
            bot: Bot,
            method: TelegramMethod[TelegramType],
        ) -> Response[TelegramType]:
            if self.count > 0:
                self.count -= 1
                await asyncio.sleep(1.0 * scale)
            return await make_request(bot, method)

    scheduler = Scheduler(MemoryBudgets(TelegramLimits(time_scale=scale)))
    async with FakeTelegram(time_scale=scale) as tg, make_bot(tg, scheduler) as bot:
        bot.session.middleware(LeaveLate(28))  # inside the rate limiter: after the grant
        chats = [tg.private_chat(tg.add_user(5000 + i, f"U{i}"))["id"] for i in range(70)]
        with Scheduler.calls_as(Priority.ANSWER):
            await asyncio.gather(*(bot.send_message(chat_id, "hi") for chat_id in chats))
        assert len(tg.calls_to("sendMessage")) == 70
        assert tg.too_many_requests == 0
    await scheduler.aclose()


async def test_block_holds_every_call_in_the_chat_only(scheduler: Scheduler) -> None:
    await scheduler.block(5, 10)  # 10 Telegram seconds (+ margin) = ~0.1 s real
    start = scheduler.budgets.now()
    await scheduler.acquire(6)  # another chat is not blocked
    assert scheduler.budgets.now() - start < 1
    await scheduler.acquire(5)
    assert scheduler.budgets.now() - start >= 10


async def test_a_cancelled_waiter_leaves_the_queue(scheduler: Scheduler) -> None:
    await scheduler.block(9, 5)
    waiter = asyncio.create_task(scheduler.acquire(9))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert scheduler.waiting == 0
    await asyncio.wait_for(scheduler.acquire(9), 1)  # not stuck behind the cancelled one


async def test_chatter_that_cannot_go_in_time_is_dropped(scheduler: Scheduler) -> None:
    await scheduler.block(8, 60)
    with pytest.raises(ChatterDroppedError):
        await scheduler.acquire(8, Priority.CHATTER, deadline=5)
    assert scheduler.waiting == 0


async def test_a_grant_wakes_no_other_waiter(scheduler: Scheduler) -> None:
    """No wake-all: with thousands of calls waiting, each grant asks the budgets about
    O(1) calls, not about every waiter."""
    enough = asyncio.Event()

    def granted(_: object) -> None:
        if scheduler.grants >= 200:
            enough.set()

    tasks = [asyncio.create_task(scheduler.acquire(2000 + i)) for i in range(3000)]
    for task in tasks:
        task.add_done_callback(granted)
    start = scheduler.budgets.now()
    await asyncio.wait_for(enough.wait(), 10)
    grants, checks = scheduler.grants, scheduler.checks
    elapsed = scheduler.budgets.now() - start
    assert grants < 3000  # still thousands waiting
    # Each grant is one check; a bot-wide shortage costs one more per budget window.
    assert checks <= grants + 2 * (elapsed / 1.0 + 2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert scheduler.waiting == 0


def test_idle_chats_are_forgotten_busy_ones_never() -> None:
    now = [0.0]
    budgets = MemoryBudgets(clock=lambda: now[0])
    call(budgets, -1)  # a group call stays in its window for 61 s
    for chat_id in range(1, MemoryBudgets.PRUNE_EVERY + 2):
        call(budgets, chat_id)
    now[0] = 10.0  # private buckets refilled; the group window still holds its call
    for chat_id in range(10_000, 10_000 + MemoryBudgets.PRUNE_EVERY):
        call(budgets, chat_id)
    assert len(budgets) < MemoryBudgets.PRUNE_EVERY + 10
    assert -1 in budgets._chats  # the group's spent budget is not forgotten
