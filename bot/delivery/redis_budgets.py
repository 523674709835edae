"""Telegram's budgets in Redis, so that every replica of the bot keeps them together.

Each check-and-take is one Lua script, one round trip: the chat's 429 block, its
budget (a private chat's token bucket as GCRA, a group's sliding window as a sorted
set of call times), the edit interval, the bot-wide window and the reserves of each
priority, with exactly the semantics of :meth:`MemoryBudgets.check
<bot.delivery.budgets.MemoryBudgets.check>`. In the bot-wide window a call in flight
has a score in the future (when it lapses); settling it gives it its answer's time.
Times come from Redis's clock (``TIME``), so replicas whose clocks differ still
agree; divided by ``time_scale`` they are Telegram seconds. Every key expires once
its state equals a fresh one.

When Redis fails, the budgets of this process take over (one warning per outage)
until Redis answers a ping again: Telegram's limits then hold per process only. They
have counted this process's own calls all along (:meth:`MemoryBudgets.record`), so a
takeover does not start from an empty window while calls granted through Redis are
still on their way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.storage.keys import Keys
from bot.tasks import stop_task

from .budgets import (
    FLIGHT_LAPSE,
    FLIGHT_RECHECK,
    Clock,
    MemoryBudgets,
    Priority,
    Scope,
    TelegramLimits,
    Verdict,
)

__all__ = ["RedisBudgets"]

log = logging.getLogger(__name__)

# ARGV[1] is "now" in Telegram seconds, or empty for Redis's clock; ARGV[2] the time
# scale. Numbers go back and forth as %.17g strings: Lua would round them to 14 digits,
# and Redis truncates numbers a script returns to integers.
_PRELUDE: Final = """
local scale = tonumber(ARGV[2])
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = (tonumber(t[1]) + tonumber(t[2]) / 1000000) / scale
end
local function fmt(x) return string.format('%.17g', x) end
-- Telegram seconds to real milliseconds, for expiries.
local function px(seconds) return math.max(1, math.ceil(seconds * scale * 1000)) end
"""

# KEYS: the chat's budget (bucket or window), its block, its last answer call, the
# bot-wide window.
# ARGV[3..]: 'bucket' rate burst | 'window' limit length; the chat's need (1 + its
# reserve); the edit interval; the call's kind ('answer', 'chatter', 'edit'); the
# bot-wide limit, window and need; a member unique to this call; the lapse of a call
# in flight; how soon to look again when only calls in flight fill the window.
# Returns {wait, scope, now}: wait '0' = counted; scope 1 = the chat is short, 2 = the bot.
_TAKE: Final = (
    _PRELUDE
    + """
local kind, a, b = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local need, interval, call = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local glimit, gwindow, gneed = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local lapse, recheck = tonumber(ARGV[13]), tonumber(ARGV[14])
local wait = 0
local blocked = tonumber(redis.call('GET', KEYS[2]))
if blocked then wait = blocked - now end
local tat
if kind == 'bucket' then
  -- GCRA: tat is when the bucket is full again; it holds n tokens from
  -- tat - (burst - n) / rate on.
  tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
  wait = math.max(wait, tat - (b - math.min(need, b)) / a - now)
else
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - b))
  local excess = redis.call('ZCARD', KEYS[1]) + math.min(need, a) - a
  if excess > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + b - now)
  end
end
if call == 'edit' then
  local last = tonumber(redis.call('GET', KEYS[3]))
  if last then wait = math.max(wait, last + interval - now) end
end
if wait > 0 then return {fmt(wait), 1, fmt(now)} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', fmt(now - gwindow))
local excess = redis.call('ZCARD', KEYS[4]) + math.min(gneed, glimit) - glimit
if excess > 0 then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[4], excess - 1, excess - 1, 'WITHSCORES')[2])
  if oldest > now then wait = recheck else wait = oldest + gwindow - now end
  if wait > 0 then return {fmt(wait), 2, fmt(now)} end
end
if kind == 'bucket' then
  tat = tat + 1 / a
  redis.call('SET', KEYS[1], fmt(tat), 'PX', px(tat - now))
else
  redis.call('ZADD', KEYS[1], fmt(now), ARGV[12])
  redis.call('PEXPIRE', KEYS[1], px(b))
end
redis.call('ZADD', KEYS[4], fmt(now + lapse), ARGV[12])
redis.call('PEXPIRE', KEYS[4], px(lapse + gwindow))
if call ~= 'chatter' then
  redis.call('SET', KEYS[3], fmt(now), 'PX', px(interval))
end
return {'0', 0, fmt(now)}
"""
)

# KEYS: the chat's block. ARGV[3]: seconds. A block never shortens a longer one.
_BLOCK: Final = (
    _PRELUDE
    + """
local untill = now + tonumber(ARGV[3])
local old = tonumber(redis.call('GET', KEYS[1]))
if old and old >= untill then return 0 end
redis.call('SET', KEYS[1], fmt(untill), 'PX', px(untill - now))
return 1
"""
)

# KEYS: the bot-wide window. ARGV[3]: the call. Only a call still in flight moves.
_SETTLE: Final = (
    _PRELUDE
    + """
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]))
if score and score > now then redis.call('ZADD', KEYS[1], fmt(now), ARGV[3]) end
return 0
"""
)

MAX_MIRRORED: Final = 10_000

_CALLS: Final = {Priority.ANSWER: "answer", Priority.CHATTER: "chatter", Priority.EDIT: "edit"}
_SCOPES: Final = {1: Scope.CHAT, 2: Scope.BOT}


class RedisBudgets:
    """The budgets of every process sharing one Redis (see the module docstring).

    ``clock`` (real seconds) replaces Redis's clock, for deterministic tests only.
    ``timeout`` bounds each round trip (real seconds): a hung Redis costs one call at
    most that long, then this process's budgets take over; ``retry_every`` is how
    often Redis is pinged meanwhile.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        limits: TelegramLimits,
        *,
        clock: Clock | None = None,
        timeout: float = 1.0,
        retry_every: float = 1.0,
    ) -> None:
        self.limits = limits
        self._redis, self._keys, self._clock = redis, keys, clock
        self._local: Clock = clock or time.monotonic
        self._timeout, self._retry_every = timeout, retry_every
        self._take = redis.register_script(_TAKE)
        self._block = redis.register_script(_BLOCK)
        self._settle = redis.register_script(_SETTLE)
        self.fallback = MemoryBudgets(limits, clock=clock)
        # Redis tickets of this process's calls in flight → their copies in the fallback.
        self._mirrored: OrderedDict[str, str] = OrderedDict()
        # Window members must be unique across processes and calls.
        self._member_prefix = secrets.token_hex(6)
        self._members = itertools.count()
        self._probe: asyncio.Task[None] | None = None  # set while Redis is down
        # Redis's time (Telegram seconds) of the last call this object counted in Redis.
        self.last_grant_at: float | None = None

    @property
    def redis_down(self) -> bool:
        return self._probe is not None

    def now(self) -> float:
        return self._local() / self.limits.time_scale

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(self.now())

    async def take(self, chat_id: int, priority: Priority) -> Verdict:
        if self._probe is not None:
            return self.fallback.check(chat_id, priority)
        limits, keys = self.limits, self._keys
        chat_reserve, bot_reserve = limits.reserves(chat_id, priority)
        shape: tuple[str, float, float]
        if chat_id > 0:
            budget = keys.telegram_bucket(chat_id)
            shape = ("bucket", limits.private_rate, limits.private_burst)
        else:
            budget = keys.telegram_window(chat_id)
            shape = ("window", limits.group_limit, limits.group_window)
        member = f"{self._member_prefix}:{next(self._members)}"
        args: list[str | float] = [
            self._now_arg(),
            limits.time_scale,
            *shape,
            1 + chat_reserve,
            limits.edit_interval_for(chat_id),
            _CALLS[priority],
            limits.global_limit,
            limits.global_window,
            1 + bot_reserve,
            member,
            FLIGHT_LAPSE,
            FLIGHT_RECHECK,
        ]
        script_keys = [
            budget,
            keys.telegram_block(chat_id),
            keys.telegram_answered(chat_id),
            keys.telegram_bot,
        ]
        try:
            async with asyncio.timeout(self._timeout):
                wait, scope, now = await self._take(keys=script_keys, args=args)
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._went_down(exc)
            return self.fallback.check(chat_id, priority)
        if float(wait) > 0:
            return Verdict(float(wait), _SCOPES[int(scope)])
        self.last_grant_at = float(now)
        self._mirrored[member] = self.fallback.record(chat_id, priority)
        if len(self._mirrored) > MAX_MIRRORED:  # only calls never settled pile up
            self._mirrored.popitem(last=False)
        return Verdict(0.0, None, member)

    async def settle(self, ticket: str) -> None:
        if self.fallback.holds(ticket):  # granted during an outage
            self.fallback.settle_now(ticket)
            return
        mirrored = self._mirrored.pop(ticket, None)
        if mirrored is not None:
            self.fallback.settle_now(mirrored)
        if self._probe is not None:
            return  # it lapses in Redis; this process keeps the limits meanwhile
        try:
            async with asyncio.timeout(self._timeout):
                await self._settle(
                    keys=[self._keys.telegram_bot],
                    args=[self._now_arg(), self.limits.time_scale, ticket],
                )
        except (RedisError, OSError) as exc:
            self._went_down(exc)

    async def block(self, chat_id: int, seconds: float) -> None:
        # Kept in this process too: if Redis fails later, the fallback still holds it.
        self.fallback.block_now(chat_id, seconds)
        if self._probe is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._block(
                    keys=[self._keys.telegram_block(chat_id)],
                    args=[self._now_arg(), self.limits.time_scale, seconds],
                )
        except (RedisError, OSError) as exc:
            self._went_down(exc)

    def _went_down(self, exc: BaseException) -> None:
        if self._probe is not None:
            return
        log.warning(
            "Redis failed (%s): Telegram's limits are kept per process until it answers again",
            type(exc).__name__,
        )
        self._probe = asyncio.get_running_loop().create_task(
            self._until_redis_answers(), name="redis-budgets-probe"
        )

    async def _until_redis_answers(self) -> None:
        while True:
            await asyncio.sleep(self._retry_every)
            try:
                async with asyncio.timeout(self._timeout):
                    await self._redis.ping()
            except (RedisError, OSError):
                continue
            log.info("Redis answers again: Telegram's limits are shared again")
            self._probe = None
            return

    async def aclose(self) -> None:
        probe, self._probe = self._probe, None
        await stop_task(probe)
