"""Arrival order of one asker's messages, kept through awaits (bot/conversation/arrivals.py)."""

from __future__ import annotations

import asyncio

from bot.conversation.arrivals import Arrivals


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
    arrivals.leave("ann", 1)
    await asyncio.wait_for(second, 1)


async def test_unregistered_messages_and_double_leaves_are_fine() -> None:
    arrivals: Arrivals[str] = Arrivals()
    await asyncio.wait_for(arrivals.turn("ann", 9), 1)  # an edit or a retry: no order to keep
    arrivals.arrive("ann", 1)
    arrivals.leave("ann", 1)
    arrivals.leave("ann", 1)
    arrivals.leave("nobody", 5)
    assert arrivals._waiting == {}
