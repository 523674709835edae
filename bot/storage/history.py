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

from .expiry import ExpiringMap
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
        self._max = max_messages
        # Expired conversations are dropped as later writes come in (amortized O(1)),
        # so a process running for weeks holds only those written within ``ttl``.
        self._data: ExpiringMap[ConversationKey, list[Message]] = ExpiringMap(ttl, clock=clock)

    def _get(self, conversation: ConversationKey) -> list[Message]:
        return self._data.get(conversation) or []

    def _put(self, conversation: ConversationKey, messages: list[Message]) -> None:
        if messages:
            self._data.put(conversation, messages)
        else:
            self._data.pop(conversation)

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
        self._data.pop(conversation)


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


class RedisHistoryStore:
    """History in Redis lists ``P:history:…`` of JSON ``{"role", "content"}``."""

    def __init__(self, redis: Redis, keys: Keys, *, max_messages: int, ttl: int) -> None:
        self._redis, self._keys = redis, keys
        self._max, self._ttl = max_messages, ttl
        self._append = redis.register_script(_APPEND)
        self._pop_answer = redis.register_script(_POP_ANSWER)

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


def _copy(message: Message) -> Message:
    return Message(role=message["role"], content=message["content"])


def _encode(message: Message) -> str:
    return json.dumps({"role": message["role"], "content": message["content"]}, ensure_ascii=False)


def _decode(raw: bytes | str) -> Message:
    data = json.loads(raw)
    return Message(role=str(data["role"]), content=str(data["content"]))
