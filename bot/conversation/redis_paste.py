"""Merging split pastes whose pieces reach different replicas (see ``paste_merger.py``).

The replica that gets the first near-limit piece opens a paste in Redis under an id
of its own, and waits for the window; pieces that reach any replica meanwhile are
added to the paste open for their sender (and push its deadline back while they
are near the limit themselves; a shorter one completes it). Each addition is
announced on ``P:paste``, so the waiting replica learns at once that its paste is
complete. Then it takes its pieces atomically and answers them, in message id
order, as one prompt. A piece that finds no open paste is a prompt of its own, or
opens the next paste: the pieces of a paste that is complete but not yet taken
stay where they are, under their paste's id.

Everything of one sender is one hash, so that every script touches a single key it
is given: ``open`` names the paste taking pieces, and ``{id}:…`` fields hold each
paste's deadline, state, counts and pieces.

Within one process the pieces still keep their arrival order through aiogram's
threaded filters (:class:`~bot.conversation.paste_merger.ArrivalOrder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from aiogram.types import Message
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from bot.conversation.paste_merger import (
    JOINER,
    ArrivalOrder,
    Merged,
    PasteKey,
    PasteLimits,
    Tally,
    TooLong,
    alone,
    near_limit,
    outcome,
)
from bot.storage.keys import Keys

from .pubsub import Subscriber

__all__ = ["RedisPasteMerger"]

log = logging.getLogger(__name__)

# KEYS[1] = the sender's pastes (hash).
# ARGV[1..5] = window (ms), channel, the joiner's length, PASTE_MAX_PARTS, PROMPT_MAX_CHARS.
_PRELUDE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[1])
local function waiting(id)
  local state = redis.call('HMGET', KEYS[1], id .. ':deadline', id .. ':complete')
  return state[1] and state[2] == '0' and tonumber(state[1]) >= now
end
local function open()
  local id = redis.call('HGET', KEYS[1], 'open')
  if id and waiting(id) then return id end
  return nil
end
-- ARGV[6..8] = piece (JSON), near the limit (1/0), its characters. As Tally.add
-- (paste_merger.py): pieces beyond a cap are only counted.
local function add(id)
  local parts = redis.call('HINCRBY', KEYS[1], id .. ':parts', 1)
  local joiner = parts > 1 and tonumber(ARGV[3]) or 0
  local chars = redis.call('HINCRBY', KEYS[1], id .. ':chars', tonumber(ARGV[8]) + joiner)
  if parts <= tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], id .. ':kept', chars)
    if chars <= tonumber(ARGV[5]) then redis.call('HSET', KEYS[1], id .. ':' .. parts, ARGV[6]) end
  end
  if ARGV[7] == '1' then
    redis.call('HSET', KEYS[1], id .. ':deadline', now + window)
  else
    redis.call('HSET', KEYS[1], id .. ':complete', '1')
  end
  redis.call('PEXPIRE', KEYS[1], 4 * window + 1000)
end
"""

# Add to the open paste (announced): 1; no paste open: 0.
_EXTEND: Final = (
    _PRELUDE
    + """
local id = open()
if not id then return 0 end
add(id)
redis.call('PUBLISH', ARGV[2], id)
return 1
"""
)

# Join the open paste (0), or open paste ARGV[9] with this piece (1).
_START: Final = (
    _PRELUDE
    + """
local id = open()
if id then
  add(id)
  redis.call('PUBLISH', ARGV[2], id)
  return 0
end
redis.call('HSET', KEYS[1], 'open', ARGV[9], ARGV[9] .. ':complete', '0')
add(ARGV[9])
return 1
"""
)

# ARGV[6] = a paste's id: ms left to wait for it, 0 once complete or past the deadline.
_LEFT: Final = (
    _PRELUDE
    + """
if not waiting(ARGV[6]) then return 0 end
return math.max(1, tonumber(redis.call('HGET', KEYS[1], ARGV[6] .. ':deadline')) - now)
"""
)

# ARGV[6] = a paste's id: take it, as {parts, chars, kept, piece…} (kept pieces, in
# the order they came: the first ones).
_COLLECT: Final = (
    _PRELUDE
    + """
local id = ARGV[6]
local tally = redis.call('HMGET', KEYS[1], id .. ':parts', id .. ':chars', id .. ':kept')
local taken = {tonumber(tally[1]) or 0, tonumber(tally[2]) or 0, tonumber(tally[3]) or 0}
local fields = {id .. ':deadline', id .. ':complete', id .. ':parts', id .. ':chars', id .. ':kept'}
local n = 1
while true do
  local piece = redis.call('HGET', KEYS[1], id .. ':' .. n)
  if not piece then break end
  table.insert(taken, piece)
  table.insert(fields, id .. ':' .. n)
  n = n + 1
end
redis.call('HDEL', KEYS[1], unpack(fields))
if redis.call('HGET', KEYS[1], 'open') == id then redis.call('HDEL', KEYS[1], 'open') end
return taken
"""
)


class RedisPasteMerger:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriber: Subscriber,
        window: float = 1.5,
        limits: PasteLimits | None = None,
    ) -> None:
        self._redis, self._keys, self._window = redis, keys, window
        self._limits = limits or PasteLimits()
        self._order = ArrivalOrder()
        self._waiting: dict[str, asyncio.Event] = {}  # paste id -> set on each announcement
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
        return await script(
            keys=[self._keys.paste(key.conversation, key.sender)],
            args=[
                max(1, round(self._window * 1000)),
                self._keys.paste_channel,
                len(JOINER),
                self._limits.max_parts,
                self._limits.max_chars,
                *args,
            ],
        )

    @staticmethod
    def _piece(message: Message, prompt: str) -> tuple[str, int, int]:
        piece = json.dumps({"id": message.message_id, "text": prompt}, ensure_ascii=False)
        return piece, int(near_limit(message)), len(prompt)

    async def extend(self, key: PasteKey, message: Message, prompt: str) -> bool:
        await self._order.after_earlier_pieces(key, message)
        return bool(await self._call(self._extend, key, *self._piece(message, prompt)))

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | TooLong | None:
        if await self.extend(key, message, prompt):
            return None
        if not near_limit(message):
            return alone(message, prompt, self._limits)
        paste = secrets.token_hex(8)
        announced = self._waiting[paste] = asyncio.Event()
        try:
            if not await self._call(self._start, key, *self._piece(message, prompt), paste):
                return None  # another replica opened one a moment ago: joined
            self._order.started(key, message)
            while True:
                announced.clear()  # before looking: an announcement meanwhile is kept
                left = int(await self._call(self._left, key, paste))
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left / 1000):
                        await announced.wait()
            parts, chars, kept, *raw = await self._call(self._collect, key, paste)
        finally:
            del self._waiting[paste]
        if not parts:
            # Expired before it was taken (this process stalled for several windows):
            # what is left is this piece.
            log.warning("a paste in chat %s expired before it was answered", message.chat.id)
            return alone(message, prompt, self._limits)
        pieces = sorted((json.loads(piece) for piece in raw), key=lambda piece: piece["id"])
        return outcome(
            message, [piece["text"] for piece in pieces], Tally(parts, chars, kept), self._limits
        )
