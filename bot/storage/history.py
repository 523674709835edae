"""Conversation history: the messages of each conversation, oldest first.

Both stores keep the newest ``max_messages`` messages, never start a conversation
with an assistant message (the model would see an answer to nothing), and let a
conversation expire ``ttl`` seconds after its last write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from redis.asyncio import Redis

from gptalk import Message

from .keys import ConversationKey, Keys

__all__ = ["HistoryStore", "MemoryHistoryStore", "RedisHistoryStore"]


class HistoryStore(Protocol):
    async def load(self, conversation: ConversationKey) -> list[Message]:
        """The conversation's messages, oldest first."""
        ...

    async def append(self, conversation: ConversationKey, *messages: Message) -> None:
        """Add messages at the end, trim, and refresh the expiry."""
        ...

    async def pop_answer(self, conversation: ConversationKey) -> Message | None:
        """Remove and return the last message if it is the assistant's (for /retry)."""
        ...

    async def clear(self, conversation: ConversationKey) -> None: ...

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        """Give ``old``'s messages to ``new`` (a group that became a supergroup).

        Nothing happens when ``old`` is empty, so moving twice is harmless. When
        ``new`` has messages already, ``old``'s go after them: they can only be a
        prompt that was still queued in the old chat when it migrated.
        """
        ...


def _trim(messages: list[Message], max_messages: int) -> list[Message]:
    messages = messages[-max_messages:]
    while messages and messages[0]["role"] == "assistant":
        messages = messages[1:]
    return messages


class MemoryHistoryStore:
    """History in process memory: not shared, lost on restart."""

    def __init__(
        self, *, max_messages: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max, self._ttl, self._clock = max_messages, ttl, clock
        self._data: dict[ConversationKey, tuple[float, list[Message]]] = {}

    def _get(self, conversation: ConversationKey) -> list[Message]:
        entry = self._data.get(conversation)
        if entry is None:
            return []
        expires, messages = entry
        if expires <= self._clock():
            del self._data[conversation]
            return []
        return messages

    def _put(self, conversation: ConversationKey, messages: list[Message]) -> None:
        if len(self._data) > 10_000:  # drop expired conversations now and then
            now = self._clock()
            for key in [k for k, (expires, _) in self._data.items() if expires <= now]:
                del self._data[key]
        if messages:
            self._data[conversation] = (self._clock() + self._ttl, messages)
        else:
            self._data.pop(conversation, None)

    async def load(self, conversation: ConversationKey) -> list[Message]:
        return [_copy(m) for m in self._get(conversation)]

    async def append(self, conversation: ConversationKey, *messages: Message) -> None:
        current = self._get(conversation) + [
            Message(role=m["role"], content=m["content"]) for m in messages
        ]
        self._put(conversation, _trim(current, self._max))

    async def pop_answer(self, conversation: ConversationKey) -> Message | None:
        messages = self._get(conversation)
        if not messages or messages[-1]["role"] != "assistant":
            return None
        answer = messages.pop()
        self._put(conversation, messages)
        return answer

    async def clear(self, conversation: ConversationKey) -> None:
        self._data.pop(conversation, None)

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        moved = self._get(old)
        if not moved or old == new:
            return
        del self._data[old]
        self._put(new, _trim(self._get(new) + moved, self._max))


# KEYS[1] = history list; ARGV = max_messages, ttl, message JSON…
_APPEND: Final = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
while true do
  local first = redis.call('LINDEX', KEYS[1], 0)
  if not first or cjson.decode(first)['role'] ~= 'assistant' then break end
  redis.call('LPOP', KEYS[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('LLEN', KEYS[1])
"""

# KEYS[1] = history list. Pops the last message only if it is the assistant's.
_POP_ANSWER: Final = """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last or cjson.decode(last)['role'] ~= 'assistant' then return false end
redis.call('RPOP', KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return last
"""


# KEYS[1] = old list, KEYS[2] = new list; ARGV = max_messages, ttl.
_MOVE: Final = """
if KEYS[1] == KEYS[2] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
else
  local moved = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = 1, #moved do redis.call('RPUSH', KEYS[2], moved[i]) end
  redis.call('DEL', KEYS[1])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
  while true do
    local first = redis.call('LINDEX', KEYS[2], 0)
    if not first or cjson.decode(first)['role'] ~= 'assistant' then break end
    redis.call('LPOP', KEYS[2])
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""


class RedisHistoryStore:
    """History in Redis lists ``P:history:…`` of JSON ``{"role", "content"}``."""

    def __init__(self, redis: Redis, keys: Keys, *, max_messages: int, ttl: int) -> None:
        self._redis, self._keys = redis, keys
        self._max, self._ttl = max_messages, ttl
        self._append = redis.register_script(_APPEND)
        self._pop_answer = redis.register_script(_POP_ANSWER)
        self._move = redis.register_script(_MOVE)

    async def load(self, conversation: ConversationKey) -> list[Message]:
        raw: Sequence[bytes | str] = await self._redis.lrange(
            self._keys.history(conversation), 0, -1
        )
        return [_decode(item) for item in raw]

    async def append(self, conversation: ConversationKey, *messages: Message) -> None:
        encoded = [_encode(m) for m in messages]
        await self._append(
            keys=[self._keys.history(conversation)], args=[self._max, self._ttl, *encoded]
        )

    async def pop_answer(self, conversation: ConversationKey) -> Message | None:
        raw = await self._pop_answer(keys=[self._keys.history(conversation)], args=[self._ttl])
        return _decode(raw) if raw else None

    async def clear(self, conversation: ConversationKey) -> None:
        await self._redis.delete(self._keys.history(conversation))

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        await self._move(
            keys=[self._keys.history(old), self._keys.history(new)], args=[self._max, self._ttl]
        )


def _copy(message: Message) -> Message:
    return Message(role=message["role"], content=message["content"])


def _encode(message: Message) -> str:
    return json.dumps({"role": message["role"], "content": message["content"]}, ensure_ascii=False)


def _decode(raw: bytes | str) -> Message:
    data = json.loads(raw)
    return Message(role=str(data["role"]), content=str(data["content"]))
