"""Per-conversation lines: one at a time, in order, bounded, cancellation- and error-safe.

One contract, two implementations: the in-process :class:`Line` and the Redis-shared
:class:`RedisLine` (on the test's private redis-server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.conversation.line import Line, LineDroppedError, Lines
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine
from bot.storage.keys import Keys

TIMEOUT = 5.0
LEASE = 3.0  # long enough never to lapse while a test holds a ticket

Ticket = AbstractAsyncContextManager[object]


@dataclass
class Kit:
    """A line implementation and how to tell that nothing more will happen."""

    make: Callable[..., Awaitable[Lines[Any]]]
    settle: Callable[[], Awaitable[None]]
    leftovers: Callable[[], Awaitable[bool]]


async def settle_memory() -> None:
    """Let every ready task run until nothing more happens."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[Kit]:
    if request.param == "memory":
        made: list[Line[Any]] = []

        async def make_memory(**kwargs: Any) -> Line[Any]:
            made.append(Line(**kwargs))
            return made[-1]

        async def memory_leftovers() -> bool:
            return any(line._queues for line in made)

        yield Kit(make_memory, settle_memory, memory_leftovers)
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    await client.flushall()
    subscriber = Subscriber(client)
    keys = Keys("test")

    async def make_redis(**kwargs: Any) -> RedisLine[Any]:
        line: RedisLine[Any] = RedisLine(client, keys, subscriber, lease=LEASE, **kwargs)
        assert await subscriber.ready()
        return line

    async def settle_redis() -> None:
        # A negative check ("nothing else started") needs a few round trips' time.
        await asyncio.sleep(0.2)

    async def redis_leftovers() -> bool:
        return bool(await client.keys("test:line:*"))

    await subscriber.start()
    try:
        yield Kit(make_redis, settle_redis, redis_leftovers)
    finally:
        await subscriber.aclose()
        await client.aclose()


class Holder:
    """A task that holds one ticket: waits for its turn, records events, then waits for
    ``release`` before giving the turn away."""

    def __init__(self, name: str, ticket: Ticket, log: list[str]) -> None:
        self.name, self.ticket, self.log = name, ticket, log
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.ticket:
                self.log.append(f"start {self.name}")
                self.started.set()
                await self.release.wait()
                self.log.append(f"end {self.name}")
        except LineDroppedError as exc:
            self.error = exc
            self.log.append(f"dropped {self.name}")

    async def wait_started(self) -> None:
        await asyncio.wait_for(self.started.wait(), TIMEOUT)

    async def done(self) -> None:
        """Wait until the task is over (also when it was cancelled before it ran)."""
        await asyncio.wait({self.task}, timeout=TIMEOUT)
        assert self.task.done()

    async def finish(self) -> None:
        self.release.set()
        await asyncio.wait_for(self.task, TIMEOUT)


async def enter(line: Lines[Any], key: str = "c", *args: Any, **kwargs: Any) -> Ticket:
    ticket = await line.enter(key, *args, **kwargs)
    assert ticket is not None
    return ticket


async def busy(line: Lines[Any], key: str = "c") -> bool:
    return sum(await line.counts(key)) > 0


async def waiting(line: Lines[Any], key: str = "c") -> int:
    return (await line.counts(key))[1]


async def running(line: Lines[Any], key: str = "c") -> int:
    return (await line.counts(key))[0]


async def test_first_ticket_runs_at_once(kit: Kit) -> None:
    line = await kit.make(max_waiting=3)
    assert not await busy(line)
    ticket = await enter(line)
    assert await busy(line)
    assert await line.counts("c") == (1, 0)
    async with asyncio.timeout(TIMEOUT), ticket:
        assert await busy(line)
    assert not await busy(line)
    assert not await kit.leftovers()


async def test_later_tickets_run_in_arrival_order_one_at_a_time(kit: Kit) -> None:
    line = await kit.make(max_waiting=3)
    log: list[str] = []
    # tickets are taken in order 1..4 but the tasks are created in reverse
    tickets = [await enter(line) for _ in range(4)]
    holders = {
        name: Holder(name, ticket, log)
        for name, ticket in reversed(list(zip("1234", tickets, strict=True)))
    }
    await kit.settle()
    assert log == ["start 1"]
    assert await waiting(line) == 3
    for name in "1234":
        await holders[name].wait_started()
        await kit.settle()
        assert [event for event in log if event.startswith("start")][-1] == f"start {name}"
        await holders[name].finish()
    assert log == [f"{what} {name}" for name in "1234" for what in ("start", "end")]
    assert not await busy(line)


async def test_waiting_tickets_run_in_message_id_order_not_arrival(kit: Kit) -> None:
    line = await kit.make(max_waiting=3)
    log: list[str] = []
    first = Holder("10", await enter(line, order=10), log)
    await first.wait_started()
    later = [Holder(str(i), await enter(line, order=i), log) for i in (13, 11, 12)]
    await kit.settle()
    await first.finish()
    for holder in sorted(later, key=lambda h: int(h.name)):
        await holder.wait_started()
        await holder.finish()
    assert log == [
        f"{what} {name}" for name in ("10", "11", "12", "13") for what in ("start", "end")
    ]


async def test_turn_passes_without_extra_delay(kit: Kit) -> None:
    line = await kit.make()
    order: list[int] = []

    async def work(index: int, ticket: Ticket) -> None:
        async with ticket:
            order.append(index)
            await asyncio.sleep(0.001)
            order.append(index)

    tickets = [await enter(line) for _ in range(4)]
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(work(i, t) for i, t in enumerate(tickets)))
    assert order == [0, 0, 1, 1, 2, 2, 3, 3]


async def test_at_most_max_waiting_wait(kit: Kit) -> None:
    line = await kit.make(max_waiting=2)
    log: list[str] = []
    first = Holder("1", await enter(line), log)
    waiters = [Holder(name, await enter(line), log) for name in "23"]
    assert await line.enter("c") is None  # one running + two waiting: full
    assert await line.enter("c") is None
    assert await waiting(line) == 2
    await kit.settle()
    assert await line.enter("c") is None

    await first.finish()  # a place frees when a ticket finishes
    await waiters[0].wait_started()
    assert await waiting(line) == 1
    late = Holder("4", await enter(line), log)
    assert await line.enter("c") is None
    for holder in [*waiters, late]:
        await holder.finish()
    assert log == [f"{what} {name}" for name in "1234" for what in ("start", "end")]


async def test_zero_waiting_allows_only_the_running_ticket(kit: Kit) -> None:
    line = await kit.make(max_waiting=0)
    ticket = await enter(line)
    assert await line.enter("c") is None
    async with ticket:
        assert await line.enter("c") is None
    again = await line.enter("c")
    assert again is not None
    async with again:
        pass


async def test_cancelled_waiter_gives_up_its_place(kit: Kit) -> None:
    line = await kit.make(max_waiting=2)
    log: list[str] = []
    first, second, third = [Holder(name, await enter(line), log) for name in "123"]
    await first.wait_started()
    assert await line.enter("c") is None

    second.task.cancel()
    await second.done()
    assert second.task.cancelled()
    assert await waiting(line) == 1
    fourth = Holder("4", await enter(line), log)  # the freed place can be taken
    assert await line.enter("c") is None

    await first.finish()
    await third.finish()
    await fourth.finish()
    assert log == ["start 1", "end 1", "start 3", "end 3", "start 4", "end 4"]
    assert not await busy(line)


async def test_cancelling_the_next_ticket_as_the_turn_passes_does_not_block(kit: Kit) -> None:
    line = await kit.make()
    log: list[str] = []
    first, second, third = [Holder(name, await enter(line), log) for name in "123"]
    await first.wait_started()
    # in the same step: the running ticket finishes (the turn goes to 2) and 2 is cancelled
    first.release.set()
    await asyncio.sleep(0)
    second.task.cancel()
    await asyncio.wait_for(first.task, TIMEOUT)
    await second.done()
    assert second.task.cancelled() or "start 2" in log
    if "start 2" in log:  # 2 got its turn before the cancel landed: it released it
        assert "end 2" not in log
    await third.wait_started()
    await third.finish()
    assert not await busy(line)


async def test_cancelling_all_waiters_leaves_a_free_line(kit: Kit) -> None:
    line = await kit.make()
    log: list[str] = []
    first = Holder("1", await enter(line), log)
    waiters = [Holder(name, await enter(line), log) for name in "234"]
    await first.wait_started()
    for holder in waiters:
        holder.task.cancel()
    for holder in waiters:
        await holder.done()
    assert await waiting(line) == 0
    await first.finish()
    assert not await busy(line)
    assert log == ["start 1", "end 1"]
    async with asyncio.timeout(TIMEOUT), await enter(line):
        pass


async def test_cancelled_running_ticket_passes_the_turn(kit: Kit) -> None:
    line = await kit.make()
    log: list[str] = []
    first, second = [Holder(name, await enter(line), log) for name in "12"]
    await first.wait_started()
    first.task.cancel()
    await second.wait_started()
    await second.finish()
    assert log == ["start 1", "start 2", "end 2"]


async def test_exception_inside_passes_the_turn_on(kit: Kit) -> None:
    line = await kit.make()
    first, second = await enter(line), await enter(line)
    ran: list[str] = []

    async def failing() -> None:
        async with first:
            ran.append("1")
            raise RuntimeError("boom")

    async def following() -> None:
        async with second:
            ran.append("2")

    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(failing(), following(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] is None
    assert ran == ["1", "2"]
    assert not await busy(line)


async def test_different_keys_run_concurrently(kit: Kit) -> None:
    line = await kit.make()
    log: list[str] = []
    holders = [Holder(key, await enter(line, key), log) for key in ("a", "b", "c")]
    for holder in holders:
        await holder.wait_started()
    assert sorted(log) == ["start a", "start b", "start c"]
    for key in "abc":
        assert await line.counts(key) == (1, 0)
    # a full line for one key does not limit another
    same = await kit.make(max_waiting=0)
    x = await same.enter("x")
    assert x is not None
    assert await same.enter("x") is None
    y = await same.enter("y")
    assert y is not None
    async with x, y:
        pass
    for holder in holders:
        await holder.finish()


async def test_drop_fails_waiting_tickets_only(kit: Kit) -> None:
    line = await kit.make()
    log: list[str] = []
    first = Holder("1", await enter(line), log)
    waiters = [Holder(name, await enter(line), log) for name in "23"]
    other = Holder("other", await enter(line, "d"), log)
    other_waiting = Holder("other2", await enter(line, "d"), log)
    await first.wait_started()
    await other.wait_started()

    await line.drop("c")
    for holder in waiters:
        await holder.done()
        assert isinstance(holder.error, LineDroppedError)
    assert sorted(log) == ["dropped 2", "dropped 3", "start 1", "start other"]
    assert not first.task.done()
    assert await line.counts("c") == (1, 0)

    # a ticket taken after the drop waits for the running one as usual
    late = Holder("4", await enter(line), log)
    await kit.settle()
    assert "start 4" not in log
    await first.finish()
    await late.wait_started()
    await late.finish()
    assert not await busy(line)

    # the other key was not touched
    assert other_waiting.error is None
    await other.finish()
    await other_waiting.wait_started()
    await other_waiting.finish()
    assert log[-1] == "end other2"


async def test_drop_of_a_ticket_not_yet_entered(kit: Kit) -> None:
    line = await kit.make()
    first, second = await enter(line), await enter(line)
    await line.drop("c")
    async with first:
        with pytest.raises(LineDroppedError):
            async with asyncio.timeout(TIMEOUT), second:
                pytest.fail("a dropped ticket must not get the turn")
    assert not await busy(line)


async def test_drop_of_an_idle_or_unknown_key_is_harmless(kit: Kit) -> None:
    line = await kit.make()
    await line.drop("nobody")
    ticket = await enter(line)
    await line.drop("c")  # only the running ticket: nothing to drop
    async with asyncio.timeout(TIMEOUT), ticket:
        pass
    assert not await busy(line)


async def test_counters(kit: Kit) -> None:
    line = await kit.make(max_waiting=3)
    log: list[str] = []
    assert await line.counts("c") == (0, 0)
    holders = []
    for expected_waiting in range(4):
        holders.append(Holder(str(expected_waiting), await enter(line), log))
        assert await line.counts("c") == (1, expected_waiting)
    for expected_waiting in (2, 1, 0):
        await holders.pop(0).finish()
        await holders[0].wait_started()
        assert await line.counts("c") == (1, expected_waiting)
    await holders.pop(0).finish()
    assert await line.counts("c") == (0, 0)
    assert await line.counts("other") == (0, 0)


async def test_many_rounds_leave_no_state_behind(kit: Kit) -> None:
    line = await kit.make(max_waiting=3)
    results: list[int] = []

    async def work(key: str, value: int) -> None:
        ticket = await line.enter(key)
        if ticket is None:
            return
        async with ticket:
            await asyncio.sleep(0)
            results.append(value)

    async with asyncio.timeout(TIMEOUT * 4):
        await asyncio.gather(*(work(f"{i % 3}:{i % 2}", i) for i in range(60)))
    assert results
    assert not any([await busy(line, f"{k}:{t}") for k in range(3) for t in range(2)])
    assert not await kit.leftovers()


# --- several askers in one conversation (groups) ---------------------------------------------


async def test_different_senders_run_at_once_up_to_the_cap(kit: Kit) -> None:
    line = await kit.make(max_waiting=10, max_running=2)
    ann, bob, cid = [await enter(line, "g", who) for who in ("ann", "bob", "cid")]
    async with asyncio.timeout(TIMEOUT), ann, bob:
        assert await line.counts("g") == (2, 1)  # Cid waits for a free place
    async with asyncio.timeout(TIMEOUT), cid:
        assert await running(line, "g") == 1


async def test_a_follow_up_waits_behind_its_senders_answer_others_go_ahead(kit: Kit) -> None:
    line = await kit.make(max_waiting=10, max_running=5)
    log: list[str] = []
    first = Holder("ann-1", await enter(line, "c", "ann"), log)
    follow_up = Holder("ann-2", await enter(line, "c", "ann"), log)
    bob = Holder("bob-1", await enter(line, "c", "bob"), log)
    await bob.wait_started()  # Bob goes ahead of Ann's follow-up
    await kit.settle()
    assert not follow_up.started.is_set()
    await first.finish()
    await follow_up.finish()
    await bob.finish()
    assert log.index("end ann-1") < log.index("start ann-2")


async def test_at_most_ten_wait_in_a_group(kit: Kit) -> None:
    line = await kit.make(max_waiting=10, max_running=1)
    tickets = [await enter(line, "g", i) for i in range(11)]
    assert await line.enter("g", 99) is None
    for ticket in tickets:
        async with asyncio.timeout(TIMEOUT), ticket:
            pass
