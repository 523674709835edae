"""Arrival order of a conversation's messages, kept through awaits, and across replicas
through the shared line (bot/conversation/arrivals.py, RedisLine.arrive)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.conversation.arrivals import Arrivals
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine, RedisTicket
from bot.storage.keys import Keys

LEASE = 3.0


async def test_a_later_message_waits_for_the_earlier_to_leave() -> None:
    arrivals: Arrivals[str] = Arrivals()
    arrivals.arrive("ann", 1)
    arrivals.arrive("ann", 2)
    arrivals.arrive("bob", 3)
    second = asyncio.create_task(arrivals.turn("ann", 2))
    await asyncio.wait_for(arrivals.turn("bob", 3), 1)  # another asker is not held up
    await asyncio.wait_for(arrivals.turn("ann", 1), 1)
    await asyncio.sleep(0.01)
    assert not second.done()  # the first has not left yet
    await arrivals.leave("ann", 1)
    await asyncio.wait_for(second, 1)


async def test_unregistered_messages_and_double_leaves_are_fine() -> None:
    arrivals: Arrivals[str] = Arrivals()
    await asyncio.wait_for(arrivals.turn("ann", 9), 1)  # an edit or a retry: no order to keep
    arrivals.arrive("ann", 1)
    await arrivals.leave("ann", 1)
    await arrivals.leave("ann", 1)
    await arrivals.leave("nobody", 5)
    arrivals.arrive("ann", 2)
    arrivals.entered("ann", 2)
    assert arrivals._waiting == {}


# --- across replicas: announced messages hold later prompts back in the shared line ----------


@pytest.fixture
async def lines(redis: aioredis.Redis) -> AsyncIterator[list[RedisLine[str]]]:
    """Two replicas' lines on one Redis: a private chat's (one runs) and a group's."""
    subscriber = Subscriber(redis)
    await subscriber.start()

    def limits(key: str) -> tuple[int, int]:
        return (1, 3) if key.startswith("p") else (5, 10)

    made = [RedisLine(redis, Keys("t"), subscriber, limits=limits, lease=LEASE) for _ in (1, 2)]
    yield made
    await subscriber.aclose()


async def enter(line: RedisLine[str], key: str, sender: str, order: int) -> RedisTicket[str]:
    ticket = await line.enter(key, sender, order=order)
    assert ticket is not None
    return ticket


async def started(ticket: RedisTicket[str], within: float = 0.3) -> bool:
    """Whether the ticket has its turn ``within`` seconds (a negative check waits a few
    round trips; a positive one, as long as a loaded machine may need)."""
    try:
        await asyncio.wait_for(asyncio.shield(ticket._turn), within)
    except TimeoutError:
        return False
    return True


async def runs(ticket: RedisTicket[str]) -> bool:
    return await started(ticket, within=5.0)


async def test_an_announced_message_goes_first_whichever_replica_enters_first(
    lines: list[RedisLine[str]],
) -> None:
    a, b = lines
    await a.arrive("p1", 10)  # replica A received message 10; B gets 11 and is faster
    eleven = await enter(b, "p1", "ann", 11)
    assert not await started(eleven)  # an empty line, yet it waits for message 10
    ten = await enter(a, "p1", "ann", 10)
    assert await runs(ten)
    assert not await started(eleven)
    async with ten:
        pass
    assert await runs(eleven)
    async with eleven:
        pass


async def test_a_withdrawn_or_lapsed_message_holds_nobody_up(
    lines: list[RedisLine[str]], redis: aioredis.Redis
) -> None:
    a, b = lines
    await a.arrive("p1", 10)  # not a prompt after all (a command, a stale message)
    eleven = await enter(b, "p1", "ann", 11)
    assert not await started(eleven)
    await a.withdraw("p1", 10)
    assert await runs(eleven)  # at once: the withdrawal is announced on pub/sub
    async with eleven:
        pass
    await a.arrive("p2", 20)  # and its replica dies before it takes a place
    loop = asyncio.get_running_loop()
    began = loop.time()
    twenty_one = await enter(b, "p2", "bob", 21)
    async with asyncio.timeout(LEASE * 3):
        async with twenty_one:
            waited = loop.time() - began
    assert LEASE * 0.9 < waited < LEASE * 2
    assert await redis.keys("t:line:*") == []


async def test_in_a_group_an_earlier_message_holds_back_later_askers(
    lines: list[RedisLine[str]],
) -> None:
    a, b = lines
    await a.arrive("g", 10)
    bob = await enter(b, "g", "bob", 11)
    assert not await started(bob)  # places are free, but message 10 comes first
    ann = await enter(a, "g", "ann", 10)
    assert await runs(ann)
    assert await runs(bob)  # both run now: different askers
    async with ann, bob:
        pass


async def test_arrivals_share_announcements_and_withdraw_once(
    lines: list[RedisLine[str]], redis: aioredis.Redis
) -> None:
    a = lines[0]
    arrivals: Arrivals[str] = Arrivals(a)
    await arrivals.announce("p1", 10)
    arrivals.arrive("p1", 10)
    assert await redis.zrange("t:line:p1:arriving", 0, -1) == [b"10"]
    await arrivals.leave("p1", 10)  # handled without a place: withdrawn for everyone
    await arrivals.leave("p1", 10)
    assert await redis.zrange("t:line:p1:arriving", 0, -1) == []
    await arrivals.announce("p1", 11)
    ticket = await enter(a, "p1", "ann", 11)  # its place ends the announcement
    arrivals.entered("p1", 11)
    assert await redis.zrange("t:line:p1:arriving", 0, -1) == []
    assert await runs(ticket)
    async with ticket:
        pass
    assert arrivals._announced == set()
