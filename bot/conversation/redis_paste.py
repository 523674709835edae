"""Merging split pastes whose pieces reach different replicas (see ``paste_merger.py``).

The replica that gets the first near-limit piece opens the paste in Redis — a hash
with its deadline, and a list of pieces — and waits for the window; pieces that
reach any replica meanwhile are appended there (and push the deadline back while
they are near the limit themselves; a shorter one completes the paste). Each
append is announced on ``P:paste``, so the waiting replica learns at once that the
paste is complete. Then it takes the pieces atomically (a late piece finds the
paste gone and is a prompt of its own) and answers them, in message id order, as
one prompt.

Within one process the pieces still keep their arrival order through aiogram's
threaded filters (:class:`~bot.conversation.paste_merger.ArrivalOrder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from aiogram.types import Message
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from bot.conversation.paste_merger import JOINER, ArrivalOrder, Merged, PasteKey, near_limit
from bot.storage.keys import Keys

from .pubsub import Subscriber

__all__ = ["RedisPasteMerger"]

# KEYS = paste hash, pieces list; ARGV[1..3] = window (ms), channel, paste key.
_PRELUDE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[1])
local function open()
  local state = redis.call('HMGET', KEYS[1], 'deadline', 'complete')
  return state[1] and state[2] == '0' and tonumber(state[1]) >= now
end
local function keep()
  redis.call('PEXPIRE', KEYS[1], 4 * window + 1000)
  redis.call('PEXPIRE', KEYS[2], 4 * window + 1000)
end
-- ARGV[4..5] = piece (JSON), near the limit (1/0)
local function append()
  redis.call('RPUSH', KEYS[2], ARGV[4])
  if ARGV[5] == '1' then
    redis.call('HSET', KEYS[1], 'deadline', now + window)
  else
    redis.call('HSET', KEYS[1], 'complete', '1')
  end
  keep()
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
"""

# Append to an open paste: 1, else 0.
_EXTEND: Final = (
    _PRELUDE
    + """
if not open() then return 0 end
append()
return 1
"""
)

# Join an open paste (0), or open one with this piece (1).
_START: Final = (
    _PRELUDE
    + """
if open() then
  append()
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'deadline', now + window, 'complete', '0')
redis.call('RPUSH', KEYS[2], ARGV[4])
keep()
return 1
"""
)

# ms left to wait: 0 once complete or past the deadline.
_LEFT: Final = (
    _PRELUDE
    + """
if not open() then return 0 end
return math.max(1, tonumber(redis.call('HGET', KEYS[1], 'deadline')) - now)
"""
)

# Close the paste and take its pieces.
_COLLECT: Final = (
    _PRELUDE
    + """
local pieces = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
return pieces
"""
)


class RedisPasteMerger:
    def __init__(self, redis: Redis, keys: Keys, subscriber: Subscriber, window: float = 1.5):
        self._redis, self._keys, self._window = redis, keys, window
        self._order = ArrivalOrder()
        self._waiting: dict[str, asyncio.Event] = {}  # paste key -> set on each announcement
        self._extend = redis.register_script(_EXTEND)
        self._start = redis.register_script(_START)
        self._left = redis.register_script(_LEFT)
        self._collect = redis.register_script(_COLLECT)
        subscriber.on(keys.paste_channel, self._announced)

    def _announced(self, data: bytes) -> None:
        if (event := self._waiting.get(data.decode())) is not None:
            event.set()

    def arriving(self, key: PasteKey, message: Message) -> AbstractAsyncContextManager[None]:
        return self._order.arriving(key, message)

    async def _call(self, script: AsyncScript, key: PasteKey, *args: str | int) -> Any:
        paste, pieces = self._keys.paste(key.conversation, key.sender)
        return await script(
            keys=[paste, pieces],
            args=[max(1, round(self._window * 1000)), self._keys.paste_channel, paste, *args],
        )

    @staticmethod
    def _piece(message: Message, prompt: str) -> tuple[str, int]:
        piece = json.dumps({"id": message.message_id, "text": prompt}, ensure_ascii=False)
        return piece, int(near_limit(message))

    async def extend(self, key: PasteKey, message: Message, prompt: str) -> bool:
        await self._order.after_earlier_pieces(key, message)
        return bool(await self._call(self._extend, key, *self._piece(message, prompt)))

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | None:
        if await self.extend(key, message, prompt):
            return None
        if not near_limit(message):
            return Merged(message, prompt)
        name = self._keys.paste(key.conversation, key.sender)[0]
        announced = self._waiting[name] = asyncio.Event()
        try:
            if not await self._call(self._start, key, *self._piece(message, prompt)):
                return None  # another replica opened it a moment ago: joined
            self._order.started(key, message)
            while True:
                announced.clear()  # before looking: an announcement meanwhile is kept
                left = int(await self._call(self._left, key))
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left / 1000):
                        await announced.wait()
            raw = await self._call(self._collect, key)
        finally:
            if self._waiting.get(name) is announced:
                del self._waiting[name]
        pieces = sorted((json.loads(piece) for piece in raw), key=lambda piece: piece["id"])
        return Merged(message, JOINER.join(piece["text"] for piece in pieces))
