"""The shared line and the control channel across OS processes on one Redis.

Each replica is a ``tests/line_worker.py`` process with its own :class:`RedisLine`
and :class:`RedisControl` on the test's private redis-server, with a short lease.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine
from bot.storage.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "replicas"
LEASE = 1.0
TIMEOUT = 20.0

Event = dict[str, Any]


def is_(what: str, name: str) -> Callable[[Event], bool]:
    return lambda event: event["event"] == what and event.get("id") == name


def is_ready(worker: int) -> Callable[[Event], bool]:
    return lambda event: event["event"] == "ready" and event["worker"] == worker


class Replicas:
    """Worker processes and everything they printed, in the order it was read."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, count: int, **options: Any) -> list[int]:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in {"lease": LEASE, **options}.items()]
        started = []
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.line_worker",
                f"--redis-url={self.redis_url}", f"--prefix={PREFIX}", *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            index = len(self._procs)
            self._procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(index, proc)))
            started.append(index)
        for index in started:
            await self.wait(is_ready(index))
        return started

    async def _read(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.events.append({**json.loads(line), "worker": index})
            self._changed.set()

    async def send(self, worker: int, **request: Any) -> None:
        stdin = self._procs[worker].stdin
        assert stdin is not None
        stdin.write((json.dumps(request) + "\n").encode())
        await stdin.drain()

    async def wait(self, match: Callable[[Event], bool], within: float = TIMEOUT) -> Event:
        async with asyncio.timeout(within):
            while True:
                self._changed.clear()
                for event in self.events:
                    if match(event):
                        return event
                await self._changed.wait()

    async def enter(self, worker: int, name: str, **request: Any) -> str:
        """Enter and wait for the answer: ``entered`` or ``full``."""
        await self.send(worker, op="enter", id=name, **request)
        found = await self.wait(lambda e: e.get("id") == name and e["event"] in ("entered", "full"))
        return str(found["event"])

    def times(self, what: str) -> dict[str, float]:
        return {e["id"]: e["t"] for e in self.events if e["event"] == what}

    def order(self, what: str) -> list[str]:
        return [e["id"] for e in sorted(self.events, key=lambda e: e["t"]) if e["event"] == what]

    def kill(self, worker: int) -> None:
        os.kill(self._procs[worker].pid, signal.SIGKILL)

    async def close(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for reader in self._readers:
            reader.cancel()


@pytest.fixture
async def replicas(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Replicas]:
    group = Replicas(redis_url)
    try:
        yield group
    finally:
        await group.close()


async def test_a_private_chat_runs_one_prompt_at_a_time_in_message_id_order(
    replicas: Replicas, redis: aioredis.Redis
) -> None:
    workers = await replicas.start(3, max_waiting=8)
    names = [f"m{i}" for i in range(1, 10)]
    for i, name in enumerate(names):  # round-robin, in message id order
        assert await replicas.enter(workers[i % 3], name, order=i + 1, hold=0.1) == "entered"
    for name in names:
        await replicas.wait(is_("end", name))
    assert replicas.order("start") == names
    starts, ends = replicas.times("start"), replicas.times("end")
    for earlier, later in itertools.pairwise(names):
        assert starts[later] >= ends[earlier]  # never two at once
    assert await redis.keys(f"{PREFIX}:line:*") == []


async def test_waiting_prompts_start_by_message_id_not_by_arrival(replicas: Replicas) -> None:
    workers = await replicas.start(3, max_waiting=3)
    assert await replicas.enter(workers[0], "m1", order=1, hold=None) == "entered"
    await replicas.wait(is_("start", "m1"))
    # later messages reach their replicas in reverse order
    for worker, order in zip(workers, (4, 3, 2), strict=True):
        assert await replicas.enter(worker, f"m{order}", order=order, hold=0.05) == "entered"
    assert await replicas.enter(workers[0], "m5", order=5) == "full"
    await replicas.send(workers[0], op="release", id="m1")
    await replicas.wait(is_("end", "m4"))
    assert replicas.order("start") == ["m1", "m2", "m3", "m4"]


async def test_a_group_keeps_its_cap_and_each_askers_order_across_processes(
    replicas: Replicas,
) -> None:
    workers = await replicas.start(3, max_running=2, max_waiting=10)
    prompts = [("ann", 1), ("bob", 2), ("cid", 3), ("ann", 4), ("dan", 5), ("eve", 6), ("fay", 7)]
    for i, (who, order) in enumerate(prompts):
        name = f"{who}{order}"
        assert await replicas.enter(workers[i % 3], name, sender=who, order=order, hold=0.3) == (
            "entered"
        )
    for who, order in prompts:
        await replicas.wait(is_("end", f"{who}{order}"))
    starts, ends = replicas.times("start"), replicas.times("end")
    at_once = max(
        sum(1 for other in starts if starts[other] <= starts[name] < ends[other]) for name in starts
    )
    assert at_once == 2  # the cap is reached and never passed
    assert starts["ann4"] >= ends["ann1"]  # one asker's prompts one after the other
    assert replicas.order("start").index("bob2") < replicas.order("start").index("ann4")


async def test_a_killed_holder_hands_over_within_a_lease(replicas: Replicas) -> None:
    holder, waiter = await replicas.start(2)
    assert await replicas.enter(holder, "m1", order=1, hold=None) == "entered"
    await replicas.wait(is_("start", "m1"))
    assert await replicas.enter(waiter, "m2", order=2, hold=0) == "entered"
    await asyncio.sleep(LEASE)  # the holder renews: m2 keeps waiting
    assert "m2" not in replicas.times("start")
    replicas.kill(holder)
    killed = time.time()
    started = await replicas.wait(is_("start", "m2"))
    handover = started["t"] - killed
    print(f"hand-over after SIGKILL: {handover:.3f} s (lease {LEASE} s)")
    assert 0 < handover < LEASE + 0.5


async def test_a_killed_waiters_place_lapses(replicas: Replicas) -> None:
    holder, doomed, waiter = await replicas.start(3)
    assert await replicas.enter(holder, "m1", order=1, hold=None) == "entered"
    await replicas.wait(is_("start", "m1"))
    assert await replicas.enter(doomed, "m2", order=2, hold=None) == "entered"
    assert await replicas.enter(waiter, "m3", order=3, hold=0) == "entered"
    replicas.kill(doomed)
    await asyncio.sleep(LEASE * 1.5)  # m2's place is no longer kept
    await replicas.send(holder, op="release", id="m1")
    await replicas.wait(is_("end", "m3"), within=LEASE * 4)
    assert "m2" not in replicas.times("start")


async def test_drop_reaches_the_waiting_prompts_of_every_process(
    replicas: Replicas, redis: aioredis.Redis
) -> None:
    workers = await replicas.start(3)
    assert await replicas.enter(workers[0], "m1", order=1, hold=None) == "entered"
    await replicas.wait(is_("start", "m1"))
    for worker, name in ((workers[1], "m2"), (workers[2], "m3")):
        assert await replicas.enter(worker, name, order=int(name[1:]), hold=0) == "entered"
    subscriber = Subscriber(redis)
    line: RedisLine[str] = RedisLine(redis, Keys(PREFIX), subscriber, lease=LEASE)
    await line.drop("c")
    for name in ("m2", "m3"):
        await replicas.wait(is_("dropped", name), within=2)
    assert await line.counts("c") == (1, 0)


async def test_control_commands_reach_every_process(replicas: Replicas) -> None:
    first, second, third = await replicas.start(3)
    await replicas.send(second, op="send", command="stop", chat_id=5, asker=7)
    sent = await replicas.wait(lambda e: e["event"] == "sent")
    assert sent["count"] == 3  # every replica applied it and said so
    applied = [e for e in replicas.events if e["event"] == "applied"]
    assert sorted(e["worker"] for e in applied) == [first, second, third]
    assert all(e["command"] == {"op": "stop", "chat_id": 5, "asker": 7} for e in applied)
    # the Stop button's command (an answer id) travels the same way
    await replicas.send(first, op="send", command="stop_answer", answer="a1b2")
    sent = await replicas.wait(lambda e: e["event"] == "sent" and e["worker"] == first)
    assert sent["count"] == 3
