"""The per-chat and bot-wide pacing model, on a fast clock (time_scale)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bot.ratelimit import Limiters, Priority, SlidingWindow, TelegramLimits, TokenBucket

SCALE = 0.01  # 1 model second = 10 ms


def limiters(**overrides: float) -> Limiters:
    return Limiters(TelegramLimits(time_scale=SCALE, **overrides))  # type: ignore[arg-type]


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


async def grant_times(lim: Limiters, chat_id: int, count: int, priority: Priority) -> list[float]:
    limiter = lim.for_chat(chat_id)
    times = []
    for _ in range(count):
        await limiter.acquire(priority)
        times.append(lim._clock())
    return times


async def test_private_chat_keeps_its_rate() -> None:
    lim = limiters()
    times = await grant_times(lim, 1, 8, Priority.HIGH)
    assert times[1] - times[0] < 0.5  # the burst
    # the bucket invariant: n calls in any interval need burst + rate × its length
    burst, rate = lim.limits.private_burst, lim.limits.private_rate
    for i, start in enumerate(times):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6


async def test_group_never_exceeds_its_window() -> None:
    lim = limiters(group_window=6.0)  # 20 per 6 model seconds, to keep the test short
    times = await grant_times(lim, -100, 45, Priority.HIGH)
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + 6.0]
        assert len(inside) <= 20


async def test_low_priority_keeps_interval_and_reserve() -> None:
    lim = limiters(edit_interval=2.0)
    times = await grant_times(lim, 7, 4, Priority.LOW)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= 1.95
    # the reserve: right after a LOW grant, a HIGH call still goes through at once
    limiter = lim.for_chat(7)
    before = lim._clock()
    await limiter.acquire(Priority.HIGH)
    assert lim._clock() - before < 0.5


async def test_high_priority_is_served_before_waiting_low() -> None:
    lim = limiters()
    limiter = lim.for_chat(3)
    await limiter.acquire(Priority.HIGH)
    await limiter.acquire(Priority.HIGH)  # bucket empty now
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await limiter.acquire(priority)
        order.append(name)

    low = asyncio.create_task(take("low", Priority.LOW))
    await asyncio.sleep(0)
    high = asyncio.create_task(take("high", Priority.HIGH))
    await asyncio.gather(low, high)
    assert order == ["high", "low"]


async def test_a_priority_callable_is_reevaluated_on_poke() -> None:
    lim = limiters(edit_interval=1000.0)  # a LOW call would wait "forever"
    limiter = lim.for_chat(4)
    await limiter.acquire(Priority.LOW)
    state = {"priority": Priority.LOW}
    task = asyncio.create_task(limiter.acquire(lambda: state["priority"]))
    await asyncio.sleep(0.05)
    assert not task.done()
    state["priority"] = Priority.HIGH
    limiter.poke()
    await asyncio.wait_for(task, 1)


async def test_block_holds_every_call_in_the_chat_only() -> None:
    lim = limiters()
    lim.retry_after(5, 10)  # 10 model seconds (+ margin) = ~0.1 s real
    start = lim._clock()
    await lim.for_chat(6).acquire()  # another chat is not blocked
    assert lim._clock() - start < 1
    await lim.for_chat(5).acquire()
    assert lim._clock() - start >= 10


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lim = limiters()
    limiter = lim.for_chat(9)
    lim.retry_after(9, 5)
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(limiter.acquire(), 1)  # not stuck behind the cancelled one


async def test_bot_wide_budget_is_shared_by_chats() -> None:
    lim = limiters(global_rate=10.0, global_burst=5)
    start = lim._clock()
    await asyncio.gather(*(lim.for_chat(1000 + i).acquire() for i in range(25)))
    # 5 at once, then 10 per model second for the other 20
    assert lim._clock() - start >= 1.9


def test_idle_limiters_are_forgotten() -> None:
    lim = limiters()
    for chat_id in range(1, Limiters.PRUNE_EVERY + 2):
        lim.for_chat(chat_id)
    assert len(lim._chats) < Limiters.PRUNE_EVERY
