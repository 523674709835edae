"""``USER_RATE_LIMIT``: prompts per user per minute, across every process.

A user over the limit gets one polite notice per flood, not one per message: the
first refused prompt is answered, the rest are ignored until the window frees a
slot. Refused prompts do not count, so waiting is enough to be answered again.

A prompt made of several messages (a split paste) counts once per message, all or
nothing: one that does not fit whole is refused whole.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from redis.asyncio import Redis

from bot.storage.expiry import ExpiringMap
from bot.storage.keys import Keys

__all__ = ["Decision", "MemoryUserLimits", "RedisUserLimits", "UserLimits", "Verdict"]


class Verdict(enum.Enum):
    ALLOW = 0
    NOTIFY = 1  # over the limit: tell the user (once)
    IGNORE = 2  # over the limit, already told


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_in: float = 0.0  # seconds until the next prompt would be accepted


class UserLimits(Protocol):
    async def hit(self, user_id: int, count: int = 1) -> Decision:
        """Count a prompt of ``user_id`` made of ``count`` messages if all of them are
        within the limit; otherwise count none.

        The id is the sender's: a user's, or a chat's (negative) for messages sent on
        behalf of a chat.
        """
        ...


@dataclass
class _Window:
    hits: deque[float] = field(default_factory=deque)  # allowed prompts, oldest first
    told_until: float = -math.inf


class MemoryUserLimits:
    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 (no limiter at all means no limit)")
        self._limit, self._window, self._clock = limit, window, clock
        # A user's state matters only until a window has passed since their last
        # allowed prompt (the "told" mark ends before that), so it expires then; only
        # allowed prompts refresh it, which keeps the map in expiry order.
        self._users: ExpiringMap[int, _Window] = ExpiringMap(window, clock=clock)

    async def hit(self, user_id: int, count: int = 1) -> Decision:
        now = self._clock()
        state = self._users.get(user_id) or _Window()
        hits = state.hits
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        if len(hits) + count <= self._limit:
            hits.extend([now] * count)
            self._users.put(user_id, state)
            return Decision(Verdict.ALLOW)
        retry_in = _retry_in(hits, count, self._limit, self._window, now)
        if state.told_until > now:
            return Decision(Verdict.IGNORE, retry_in)
        state.told_until = now + retry_in
        return Decision(Verdict.NOTIFY, retry_in)


def _retry_in(hits: Sequence[float], count: int, limit: int, window: float, now: float) -> float:
    """Seconds until ``count`` more would fit, once enough of ``hits`` (oldest first)
    have left the window. More than the limit never fits; the best there is to tell
    is when all have left, or a whole window."""
    leave = min(len(hits), len(hits) + count - limit)
    return hits[leave - 1] + window - now if leave > 0 else window


# KEYS: the user's sorted set of prompt times, the "told" flag.
# ARGV: now (ms), window (ms), limit, a unique member, messages in the prompt.
_HIT: Final = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local held = redis.call('ZCARD', KEYS[1])
if held + count <= limit then
  for i = 1, count do redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i) end
  redis.call('PEXPIRE', KEYS[1], window)
  return {0, 0}
end
-- As _retry_in in Python.
local leave = math.min(held, held + count - limit)
local retry = window
if leave > 0 then
  local last = redis.call('ZRANGE', KEYS[1], leave - 1, leave - 1, 'WITHSCORES')
  retry = tonumber(last[2]) + window - now
end
retry = math.max(1, retry)
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', retry) then return {1, retry} end
return {2, retry}
"""


class RedisUserLimits:
    def __init__(self, redis: Redis, keys: Keys, limit: int, window: float = 60.0) -> None:
        self._keys, self._limit, self._window_ms = keys, limit, int(window * 1000)
        self._script = redis.register_script(_HIT)

    async def hit(self, user_id: int, count: int = 1) -> Decision:
        key = self._keys.user_prompts(user_id)
        verdict, retry_ms = await self._script(
            keys=[key, f"{key}:told"],
            args=[
                int(time.time() * 1000),
                self._window_ms,
                self._limit,
                secrets.token_hex(8),
                count,
            ],
        )
        return Decision(Verdict(int(verdict)), int(retry_ms) / 1000)
