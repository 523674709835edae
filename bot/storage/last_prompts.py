"""Each asker's last prompt in each conversation: the one message whose edit is answered anew.

Every replica must see the same record, whichever took the prompt: a record kept in
one replica's memory went stale as soon as the asker's next prompt went to another
one, and an edit of the older message then replaced the newest question and answer.
A record lives as long as a history does (``HISTORY_TTL`` after its last write), so
an edit is answered anew after a restart too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from redis.asyncio import Redis

from .expiry import ExpiringMap
from .keys import ConversationKey, Keys

__all__ = ["DEFAULT_TTL", "LastPrompts", "MemoryLastPrompts", "RedisLastPrompts"]

DEFAULT_TTL: Final = 604_800  # HISTORY_TTL's default


class LastPrompts(Protocol):
    async def note(self, conversation: ConversationKey, asker: int, message_id: int) -> None:
        """``message_id`` took its place in line as ``asker``'s prompt: it is their last
        one, unless a later message of theirs is noted already (replicas may note one
        asker's prompts out of order; message ids grow within a chat)."""
        ...

    async def last(self, conversation: ConversationKey, asker: int) -> int | None:
        """The message id of ``asker``'s last prompt in ``conversation``, if any."""
        ...


class MemoryLastPrompts:
    """In process memory: not shared, lost on restart."""

    def __init__(
        self, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._data: ExpiringMap[tuple[ConversationKey, int], int] = ExpiringMap(ttl, clock=clock)

    async def note(self, conversation: ConversationKey, asker: int, message_id: int) -> None:
        key = (conversation, asker)
        current = self._data.get(key)
        if current is None or current <= message_id:
            self._data.put(key, message_id)

    async def last(self, conversation: ConversationKey, asker: int) -> int | None:
        return self._data.get((conversation, asker))


# KEYS[1] = the asker's record; ARGV = message id, ttl. Never moves back to an older message.
_NOTE: Final = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or current <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""


class RedisLastPrompts:
    """``P:last_prompt:{c}:{asker}``: the message id, expiring ``ttl`` seconds after it
    was written (an asker's own key, so that a busy group's records expire one by one)."""

    def __init__(self, redis: Redis, keys: Keys, *, ttl: int) -> None:
        self._redis, self._keys, self._ttl = redis, keys, ttl
        self._note = redis.register_script(_NOTE)

    async def note(self, conversation: ConversationKey, asker: int, message_id: int) -> None:
        await self._note(
            keys=[self._keys.last_prompt(conversation, asker)], args=[message_id, self._ttl]
        )

    async def last(self, conversation: ConversationKey, asker: int) -> int | None:
        raw = await self._redis.get(self._keys.last_prompt(conversation, asker))
        return None if raw is None else int(raw)
