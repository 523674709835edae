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
from redis.exceptions import WatchError

from gptalk import Message

from .expiry import ExpiringMap
from .keys import ConversationKey, Keys

__all__ = ["HistoryStore", "MemoryHistoryStore", "RedisHistoryStore", "Turn"]

# Optimistic transactions retried this often before giving up (another writer won).
_WATCH_RETRIES: Final = 5


class Turn(Message, total=False):
    """A message of the history, with who asked it (or whose question it answers):
    the user's id, or the chat's for messages sent on behalf of a chat. In a group
    several people's answers stream at once, so their turns interleave."""

    asker: int


class HistoryStore(Protocol):
    async def load(self, conversation: ConversationKey) -> list[Turn]:
        """The conversation's messages, oldest first."""
        ...

    async def append(self, conversation: ConversationKey, *messages: Turn) -> None:
        """Add messages at the end, trim, and refresh the expiry."""
        ...

    async def pop_answer(
        self, conversation: ConversationKey, asker: int | None = None
    ) -> Turn | None:
        """Remove and return the answer to ``asker``'s last question, if there is one
        after it (for /retry); ``None`` means anyone's (the last question's)."""
        ...

    async def replace_question(self, conversation: ConversationKey, turn: Turn) -> list[Turn]:
        """Put ``turn`` in place of its asker's last question and drop the answer to
        it (an edited prompt), atomically; return the conversation up to the new
        question. With no question of that asker, ``turn`` is appended."""
        ...

    async def answer_after(
        self,
        conversation: ConversationKey,
        asker: int | None,
        is_question: Callable[[str], bool],
        answer: Turn,
    ) -> bool:
        """Put ``answer`` right after ``asker``'s last question that ``is_question``
        tells, if that question is still unanswered (a later question of theirs may
        follow it: a prompt that started before this answer could be recorded).
        False when there is no such question (a reset) or it has an answer."""
        ...

    async def clear(self, conversation: ConversationKey) -> None: ...

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        """Give ``old``'s messages to ``new`` (a group that became a supergroup).

        Nothing happens when ``old`` is empty, so moving twice is harmless. When
        ``new`` has messages already, ``old``'s go after them: they can only be a
        prompt that was still queued in the old chat when it migrated.
        """
        ...


def _trim(messages: list[Turn], max_messages: int) -> list[Turn]:
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
        self._data: ExpiringMap[ConversationKey, list[Turn]] = ExpiringMap(ttl, clock=clock)

    def _get(self, conversation: ConversationKey) -> list[Turn]:
        return self._data.get(conversation) or []

    def _put(self, conversation: ConversationKey, messages: list[Turn]) -> None:
        if messages:
            self._data.put(conversation, messages)
        else:
            self._data.pop(conversation)

    async def load(self, conversation: ConversationKey) -> list[Turn]:
        return [_copy(m) for m in self._get(conversation)]

    async def append(self, conversation: ConversationKey, *messages: Turn) -> None:
        current = self._get(conversation) + [_copy(m) for m in messages]
        self._put(conversation, _trim(current, self._max))

    async def pop_answer(
        self, conversation: ConversationKey, asker: int | None = None
    ) -> Turn | None:
        messages = self._get(conversation)
        index = answer_index(messages, asker)
        if index is None:
            return None
        answer = messages.pop(index)
        self._put(conversation, messages)
        return answer

    async def replace_question(self, conversation: ConversationKey, turn: Turn) -> list[Turn]:
        messages = self._get(conversation)
        asker = turn.get("asker")
        question = question_index(messages, asker)
        if question is None:
            await self.append(conversation, turn)
            return await self.load(conversation)
        answer = answer_index(messages, asker)
        if answer is not None:
            del messages[answer]
        messages[question] = _copy(turn)
        self._put(conversation, messages)
        return [_copy(m) for m in messages[: question + 1]]

    async def answer_after(
        self,
        conversation: ConversationKey,
        asker: int | None,
        is_question: Callable[[str], bool],
        answer: Turn,
    ) -> bool:
        messages = self._get(conversation)
        index = unanswered_question(messages, asker, is_question)
        if index is None:
            return False
        messages.insert(index + 1, _copy(answer))
        self._put(conversation, _trim(messages, self._max))
        return True

    async def clear(self, conversation: ConversationKey) -> None:
        self._data.pop(conversation)

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        moved = self._get(old)
        if not moved or old == new:
            return
        self._data.pop(old)
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


def _find_question(*, asker_arg: int) -> str:
    """Lua prelude (the twin of :func:`question_index`): ``turns`` is the list,
    ``mine(turn)`` tells the asker's turns (ARGV[asker_arg]; '' = anyone's), and
    ``question`` is the index of the asker's last question (nil: none)."""
    return f"""
local turns = redis.call('LRANGE', KEYS[1], 0, -1)
local asker = ARGV[{asker_arg}]
local function mine(turn)
  return asker == '' or turn['asker'] == nil or tostring(turn['asker']) == asker
end
local question = nil
for i = #turns, 1, -1 do
  local turn = cjson.decode(turns[i])
  if turn['role'] == 'user' and mine(turn) then question = i break end
end
"""


# KEYS[1] = history list; ARGV = ttl, asker ('' = anyone). Removes the answer to the
# asker's last question (see answer_index), by position.
_POP_ANSWER: Final = (
    _find_question(asker_arg=2)
    + """
if not question then return false end
for i = #turns, question + 1, -1 do
  local turn = cjson.decode(turns[i])
  if turn['role'] == 'assistant' and mine(turn) then
    redis.call('LSET', KEYS[1], i - 1, '__removed__')
    redis.call('LREM', KEYS[1], 1, '__removed__')
    if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
    return turns[i]
  end
end
return false
"""
)


# KEYS[1] = history list; ARGV = max_messages, ttl, asker ('' = anyone), turn JSON.
# Puts the turn in place of the asker's last question, removes the answer to it (see
# answer_index), returns the list up to the new question; appends without a question.
_REPLACE_QUESTION: Final = (
    _find_question(asker_arg=3)
    + """
if not question then
  redis.call('RPUSH', KEYS[1], ARGV[4])
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return redis.call('LRANGE', KEYS[1], 0, -1)
end
for i = #turns, question + 1, -1 do
  local turn = cjson.decode(turns[i])
  if turn['role'] == 'assistant' and mine(turn) then
    redis.call('LSET', KEYS[1], i - 1, '__removed__')
    redis.call('LREM', KEYS[1], 1, '__removed__')
    break
  end
end
redis.call('LSET', KEYS[1], question - 1, ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('LRANGE', KEYS[1], 0, question - 1)
"""
)


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
        self._replace_question = redis.register_script(_REPLACE_QUESTION)

    async def load(self, conversation: ConversationKey) -> list[Turn]:
        raw: Sequence[bytes | str] = await self._redis.lrange(
            self._keys.history(conversation), 0, -1
        )
        return [_decode(item) for item in raw]

    async def append(self, conversation: ConversationKey, *messages: Turn) -> None:
        encoded = [_encode(m) for m in messages]
        await self._append(
            keys=[self._keys.history(conversation)], args=[self._max, self._ttl, *encoded]
        )

    async def pop_answer(
        self, conversation: ConversationKey, asker: int | None = None
    ) -> Turn | None:
        raw = await self._pop_answer(
            keys=[self._keys.history(conversation)],
            args=[self._ttl, "" if asker is None else asker],
        )
        return _decode(raw) if raw else None

    async def replace_question(self, conversation: ConversationKey, turn: Turn) -> list[Turn]:
        asker = turn.get("asker")
        raw: Sequence[bytes | str] = await self._replace_question(
            keys=[self._keys.history(conversation)],
            args=[self._max, self._ttl, "" if asker is None else asker, _encode(turn)],
        )
        return [_decode(item) for item in raw]

    async def answer_after(
        self,
        conversation: ConversationKey,
        asker: int | None,
        is_question: Callable[[str], bool],
        answer: Turn,
    ) -> bool:
        # The question is told in Python (a fingerprint Lua cannot compute), so the
        # list is rewritten in an optimistic transaction: WATCH, read, MULTI, write.
        key = self._keys.history(conversation)
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(key)
                    raw: list[bytes | str] = await pipe.lrange(key, 0, -1)
                    turns = [_decode(item) for item in raw]
                    index = unanswered_question(turns, asker, is_question)
                    if index is None:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return False
                    turns.insert(index + 1, answer)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    pipe.rpush(key, *(_encode(t) for t in _trim(turns, self._max)))
                    pipe.expire(key, self._ttl)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return False

    async def clear(self, conversation: ConversationKey) -> None:
        await self._redis.delete(self._keys.history(conversation))

    async def move(self, old: ConversationKey, new: ConversationKey) -> None:
        await self._move(
            keys=[self._keys.history(old), self._keys.history(new)], args=[self._max, self._ttl]
        )


def question_index(turns: Sequence[Turn], asker: int | None) -> int | None:
    """Where ``asker``'s last question is, if anywhere (``None``: anyone's). Turns
    without an asker (history from before askers were kept) count as anyone's."""
    return next(
        (
            i
            for i in range(len(turns) - 1, -1, -1)
            if turns[i]["role"] == "user" and _mine(turns[i], asker)
        ),
        None,
    )


def _mine(turn: Turn, asker: int | None) -> bool:
    return asker is None or turn.get("asker", asker) == asker


def answer_index(turns: Sequence[Turn], asker: int | None) -> int | None:
    """Where the answer to ``asker``'s last question is (after that question), if
    anywhere. Turns without an asker (history from before askers were kept) count as
    anyone's."""
    question = question_index(turns, asker)
    if question is None:
        return None
    return next(
        (
            i
            for i in range(len(turns) - 1, question, -1)
            if turns[i]["role"] == "assistant" and _mine(turns[i], asker)
        ),
        None,
    )


def unanswered_question(
    turns: Sequence[Turn], asker: int | None, is_question: Callable[[str], bool]
) -> int | None:
    """Where ``asker``'s last question that ``is_question`` tells is, if nothing of
    theirs follows it but later questions (its answer is missing)."""
    for i in range(len(turns) - 1, -1, -1):
        turn = turns[i]
        if turn["role"] == "user" and _mine(turn, asker) and is_question(turn["content"]):
            after = next((t for t in turns[i + 1 :] if _mine(t, asker)), None)
            return i if after is None or after["role"] == "user" else None
    return None


def _copy(message: Turn) -> Turn:
    turn = Turn(role=message["role"], content=message["content"])
    if "asker" in message:
        turn["asker"] = message["asker"]
    return turn


def _encode(message: Turn) -> str:
    return json.dumps(_copy(message), ensure_ascii=False)


def _decode(raw: bytes | str) -> Turn:
    data = json.loads(raw)
    turn = Turn(role=str(data["role"]), content=str(data["content"]))
    if isinstance(data.get("asker"), int):
        turn["asker"] = data["asker"]
    return turn
