"""Arrival order of a conversation's messages, kept through the awaits between a
message's arrival and its place in the conversation's line.

A message is registered when it arrives (synchronously, in the dispatcher's order)
and leaves once it has its place in the line, or once its handling ends. A prompt
waits for the earlier messages of its conversation to leave first, so that an await
on the way (a Redis round trip in the paste merger, the rate limit) cannot let a
later message overtake an earlier one (nor a later asker take the last free place
of a group's line). A first piece of a split paste leaves at once: it waits for
the rest of the paste, and takes its place when the paste is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Arrivals"]

K = TypeVar("K", bound=Hashable)


class Arrivals(Generic[K]):
    def __init__(self) -> None:
        # Insertion order is arrival order.
        self._waiting: dict[K, dict[int, asyncio.Future[None]]] = {}

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

    def leave(self, key: K, message_id: int) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        left = queue.pop(message_id, None)
        if left is not None and not left.done():
            left.set_result(None)
        if not queue:
            del self._waiting[key]
