"""Per-conversation lines: one at a time, FIFO, bounded, cancellation- and error-safe."""

from __future__ import annotations

import asyncio

import pytest

from bot.conversation.line import Line, LineDroppedError, Ticket

TIMEOUT = 2.0


async def settle() -> None:
    """Let every ready task run until nothing more happens."""
    for _ in range(10):
        await asyncio.sleep(0)


class Holder:
    """A task that holds one ticket: waits for its turn, records events, then waits for
    ``release`` before giving the turn away."""

    def __init__(self, name: str, ticket: Ticket[str], log: list[str]) -> None:
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

    async def finish(self) -> None:
        self.release.set()
        await asyncio.wait_for(self.task, TIMEOUT)


def enter(line: Line[str], key: str = "c") -> Ticket[str]:
    ticket = line.enter(key)
    assert ticket is not None
    return ticket


async def test_first_ticket_runs_at_once() -> None:
    line: Line[str] = Line(max_waiting=3)
    assert not line.busy("c")
    ticket = enter(line)
    assert line.busy("c")
    assert line.waiting("c") == 0
    async with asyncio.timeout(TIMEOUT), ticket:
        assert line.busy("c")
    assert not line.busy("c")
    assert line.waiting("c") == 0


async def test_later_tickets_run_in_arrival_order_one_at_a_time() -> None:
    line: Line[str] = Line(max_waiting=3)
    log: list[str] = []
    # tickets are taken in order 1..4 but the tasks are created in reverse
    tickets = [enter(line) for _ in range(4)]
    holders = {
        name: Holder(name, ticket, log)
        for name, ticket in reversed(list(zip("1234", tickets, strict=True)))
    }
    await settle()
    assert log == ["start 1"]
    assert line.waiting("c") == 3
    for name in "1234":
        await settle()
        assert log[-1] == f"start {name}"
        assert [event for event in log if event.startswith("start")][-1] == f"start {name}"
        await holders[name].finish()
    await settle()
    assert log == [f"{what} {name}" for name in "1234" for what in ("start", "end")]
    assert not line.busy("c")


async def test_turn_passes_without_extra_delay() -> None:
    line: Line[str] = Line()
    order: list[int] = []

    async def work(index: int, ticket: Ticket[str]) -> None:
        async with ticket:
            order.append(index)
            await asyncio.sleep(0.001)
            order.append(index)

    tickets = [enter(line) for _ in range(4)]
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(work(i, t) for i, t in enumerate(tickets)))
    assert order == [0, 0, 1, 1, 2, 2, 3, 3]


async def test_at_most_max_waiting_wait() -> None:
    line: Line[str] = Line(max_waiting=2)
    log: list[str] = []
    first = Holder("1", enter(line), log)
    waiting = [Holder(name, enter(line), log) for name in "23"]
    assert line.enter("c") is None  # one running + two waiting: full
    assert line.enter("c") is None
    assert line.waiting("c") == 2
    await settle()
    assert line.enter("c") is None

    await first.finish()  # a place frees when a ticket finishes
    await settle()
    assert log[-1] == "start 2"
    assert line.waiting("c") == 1
    late = Holder("4", enter(line), log)
    assert line.enter("c") is None
    for holder in [*waiting, late]:
        await holder.finish()
    assert log == [f"{what} {name}" for name in "1234" for what in ("start", "end")]


async def test_zero_waiting_allows_only_the_running_ticket() -> None:
    line: Line[str] = Line(max_waiting=0)
    ticket = enter(line)
    assert line.enter("c") is None
    async with ticket:
        assert line.enter("c") is None
    assert line.enter("c") is not None


async def test_cancelled_waiter_gives_up_its_place() -> None:
    line: Line[str] = Line(max_waiting=2)
    log: list[str] = []
    first, second, third = (Holder(name, enter(line), log) for name in "123")
    await settle()
    assert line.enter("c") is None

    second.task.cancel()
    await settle()
    assert second.task.cancelled()
    assert line.waiting("c") == 1
    fourth = Holder("4", enter(line), log)  # the freed place can be taken
    assert line.enter("c") is None

    await first.finish()
    await third.finish()
    await fourth.finish()
    assert log == ["start 1", "end 1", "start 3", "end 3", "start 4", "end 4"]
    assert not line.busy("c")


async def test_cancelling_the_next_ticket_as_the_turn_passes_does_not_block() -> None:
    line: Line[str] = Line()
    log: list[str] = []
    first, second, third = (Holder(name, enter(line), log) for name in "123")
    await settle()
    # in the same step: the running ticket finishes (the turn goes to 2) and 2 is cancelled
    first.release.set()
    await asyncio.sleep(0)
    second.task.cancel()
    await asyncio.wait_for(first.task, TIMEOUT)
    await settle()
    assert second.task.cancelled() or "start 2" in log
    if "start 2" in log:  # 2 got its turn before the cancel landed: it released it
        assert "end 2" not in log
    await asyncio.wait_for(third.started.wait(), TIMEOUT)
    await third.finish()
    assert not line.busy("c")


async def test_cancelling_all_waiters_leaves_a_free_line() -> None:
    line: Line[str] = Line()
    log: list[str] = []
    first = Holder("1", enter(line), log)
    waiters = [Holder(name, enter(line), log) for name in "234"]
    await settle()
    for holder in waiters:
        holder.task.cancel()
    await settle()
    assert line.waiting("c") == 0
    await first.finish()
    assert not line.busy("c")
    assert log == ["start 1", "end 1"]
    async with asyncio.timeout(TIMEOUT), enter(line):
        pass


async def test_cancelled_running_ticket_passes_the_turn() -> None:
    line: Line[str] = Line()
    log: list[str] = []
    first, second = (Holder(name, enter(line), log) for name in "12")
    await settle()
    first.task.cancel()
    await asyncio.wait_for(second.started.wait(), TIMEOUT)
    await second.finish()
    assert log == ["start 1", "start 2", "end 2"]


async def test_exception_inside_passes_the_turn_on() -> None:
    line: Line[str] = Line()
    first, second = enter(line), enter(line)
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
    assert not line.busy("c")


async def test_different_keys_run_concurrently() -> None:
    line: Line[str] = Line()
    log: list[str] = []
    holders = [Holder(key, enter(line, key), log) for key in ("a", "b", "c")]
    async with asyncio.timeout(TIMEOUT):
        for holder in holders:
            await holder.started.wait()
    assert sorted(log) == ["start a", "start b", "start c"]
    assert all(line.busy(key) for key in "abc")
    assert all(line.waiting(key) == 0 for key in "abc")
    # a full line for one key does not limit another
    same = Line[str](max_waiting=0)
    assert same.enter("x") is not None
    assert same.enter("x") is None
    assert same.enter("y") is not None
    for holder in holders:
        await holder.finish()


async def test_drop_fails_waiting_tickets_only() -> None:
    line: Line[str] = Line()
    log: list[str] = []
    running = Holder("1", enter(line), log)
    waiting = [Holder(name, enter(line), log) for name in "23"]
    other = Holder("other", enter(line, "d"), log)
    other_waiting = Holder("other2", enter(line, "d"), log)
    await settle()

    line.drop("c")
    await settle()
    for holder in waiting:
        assert holder.task.done()
        assert isinstance(holder.error, LineDroppedError)
    assert sorted(log) == ["dropped 2", "dropped 3", "start 1", "start other"]
    assert not running.task.done()
    assert line.busy("c")
    assert line.waiting("c") == 0

    # a ticket taken after the drop waits for the running one as usual
    late = Holder("4", enter(line), log)
    await settle()
    assert "start 4" not in log
    await running.finish()
    await asyncio.wait_for(late.started.wait(), TIMEOUT)
    await late.finish()
    assert not line.busy("c")

    # the other key was not touched
    assert other_waiting.error is None
    await other.finish()
    await other_waiting.finish()
    assert log[-1] == "end other2"


async def test_drop_of_a_ticket_not_yet_entered() -> None:
    line: Line[str] = Line()
    first, second = enter(line), enter(line)
    line.drop("c")
    async with first:
        with pytest.raises(LineDroppedError):
            async with second:
                pytest.fail("a dropped ticket must not get the turn")
    assert not line.busy("c")


async def test_drop_of_an_idle_or_unknown_key_is_harmless() -> None:
    line: Line[str] = Line()
    line.drop("nobody")
    ticket = enter(line)
    line.drop("c")  # only the running ticket: nothing to drop
    async with asyncio.timeout(TIMEOUT), ticket:
        pass
    assert not line.busy("c")


async def test_counters() -> None:
    line: Line[str] = Line(max_waiting=3)
    log: list[str] = []
    assert (line.busy("c"), line.waiting("c")) == (False, 0)
    holders = []
    for expected_waiting in range(4):
        holders.append(Holder(str(expected_waiting), enter(line), log))
        assert (line.busy("c"), line.waiting("c")) == (True, expected_waiting)
    for expected_waiting in (2, 1, 0):
        await holders.pop(0).finish()
        await settle()
        assert (line.busy("c"), line.waiting("c")) == (True, expected_waiting)
    await holders.pop(0).finish()
    assert (line.busy("c"), line.waiting("c")) == (False, 0)
    assert (line.busy("other"), line.waiting("other")) == (False, 0)


async def test_many_rounds_leave_no_state_behind() -> None:
    line: Line[tuple[int, int | None]] = Line(max_waiting=3)
    results: list[int] = []

    async def work(key: tuple[int, int | None], value: int) -> None:
        ticket = line.enter(key)
        if ticket is None:
            return
        async with ticket:
            await asyncio.sleep(0)
            results.append(value)

    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(work((i % 3, None if i % 2 else 1), i) for i in range(60)))
    assert results
    assert not any(line.busy((k, t)) for k in range(3) for t in (None, 1))
    assert line._queues == {}


# --- several askers in one conversation (groups) ---------------------------------------------


async def test_different_senders_run_at_once_up_to_the_cap() -> None:
    line: Line[str] = Line(max_waiting=10, max_running=2)
    ann, bob, cid = line.enter("g", "ann"), line.enter("g", "bob"), line.enter("g", "cid")
    assert ann is not None
    assert bob is not None
    assert cid is not None
    async with asyncio.timeout(TIMEOUT), ann, bob:
        assert line.running("g") == 2
        assert line.waiting("g") == 1  # Cid waits for a free place
    async with asyncio.timeout(TIMEOUT), cid:
        assert line.running("g") == 1


async def test_a_follow_up_waits_behind_its_senders_answer_others_go_ahead() -> None:
    line: Line[str] = Line(max_waiting=10, max_running=5)
    log: list[str] = []
    first = Holder("ann-1", enter_as(line, "ann"), log)
    follow_up = Holder("ann-2", enter_as(line, "ann"), log)
    bob = Holder("bob-1", enter_as(line, "bob"), log)
    async with asyncio.timeout(TIMEOUT):
        await bob.started.wait()  # Bob goes ahead of Ann's follow-up
        await settle()
        assert not follow_up.started.is_set()
        await first.finish()
        await follow_up.finish()
        await bob.finish()
    assert log.index("end ann-1") < log.index("start ann-2")


async def test_at_most_ten_wait_in_a_group() -> None:
    line: Line[str] = Line(max_waiting=10, max_running=1)
    running = line.enter("g", 0)
    waiting = [line.enter("g", i) for i in range(1, 11)]
    assert running is not None
    assert None not in waiting
    assert line.enter("g", 99) is None


def enter_as(line: Line[str], sender: str) -> Ticket[str]:
    ticket = line.enter("c", sender)
    assert ticket is not None
    return ticket
