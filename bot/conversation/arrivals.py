"""Arrival order of a conversation's messages, kept through the awaits between a
message's arrival and its place in the conversation's line.

A message is registered when it arrives (synchronously, in the dispatcher's order)
and leaves once it has its place in the line, or once its handling ends. A prompt
waits for the earlier messages of its conversation to leave first, so that an await
on the way (a Redis round trip in the paste merger, the rate limit) cannot let a
later message overtake an earlier one (nor a later asker take the last free place
of a group's line). A first piece of a split paste leaves at once: it waits for
the rest of the paste, and takes its place when the paste is complete.

With replicas, the next message of a chat may reach another process. There the
shared line keeps the order (``RedisLine.arrive``): a replica *announces* each
message as it receives it, before Telegram hears back (so before Telegram sends
the chat's next one), and the announcement holds later prompts of the
conversation back on every replica until the message takes its place in the line
(which ends the announcement) or :meth:`Arrivals.leave` withdraws it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from redis.exceptions import RedisError

__all__ = ["Arrivals", "SharedArrivals"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class SharedArrivals(Protocol[K_contra]):
    """Messages on their way, as every replica's line sees them."""

    async def arrive(self, key: K_contra, order: int) -> None: ...

    async def withdraw(self, key: K_contra, order: int) -> None: ...


class Arrivals(Generic[K]):
    def __init__(self, shared: SharedArrivals[K] | None = None) -> None:
        self._shared = shared
        # Insertion order is arrival order.
        self._waiting: dict[K, dict[int, asyncio.Future[None]]] = {}
        self._announced: set[tuple[K, int]] = set()

    async def announce(self, key: K, message_id: int) -> None:
        """Tell every replica that the message is on its way (without a shared line,
        there is nobody to tell). Best effort: when Redis fails, replicas may
        start a chat's prompts out of order, nothing worse."""
        if self._shared is None:
            return
        try:
            await self._shared.arrive(key, message_id)
        except RedisError as exc:
            log.warning("message arrival not shared: Redis failed (%s)", exc)
            return
        self._announced.add((key, message_id))

    def arrive(self, key: K, message_id: int) -> None:
        queue = self._waiting.setdefault(key, {})
        if message_id not in queue:
            queue[message_id] = asyncio.get_running_loop().create_future()

    async def turn(self, key: K, message_id: int) -> None:
        """Wait until every message of ``key`` that arrived before this one left."""
        queue = self._waiting.get(key, {})
        earlier = []
        for other, left in queue.items():
            if other == message_id:
                break
            earlier.append(left)
        else:
            return  # not registered (an edit, a retry): nothing to keep order with
        for left in earlier:
            await asyncio.shield(left)

    def entered(self, key: K, message_id: int) -> None:
        """The message has its place in the line (or was refused one): taking it
        ended its announcement too."""
        self._announced.discard((key, message_id))
        self._leave(key, message_id)

    async def leave(self, key: K, message_id: int) -> None:
        """The message goes without a place in the line (not a prompt, refused, or
        a paste's first piece waiting for the rest); its announcement ends too."""
        self._leave(key, message_id)
        if (key, message_id) not in self._announced:
            return
        self._announced.discard((key, message_id))
        assert self._shared is not None
        try:
            await self._shared.withdraw(key, message_id)
        except RedisError as exc:  # it lapses with the lease
            log.warning("message arrival not withdrawn: Redis failed (%s)", exc)

    def _leave(self, key: K, message_id: int) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        left = queue.pop(message_id, None)
        if left is not None and not left.done():
            left.set_result(None)
        if not queue:
            del self._waiting[key]
