"""Counters for /stats, shared by every process through Redis.

Counters (``requests``, ``failures``, ``logins``, ``429s``) are fields of the hash
``P:stats``, and so are the per-provider ones, ``provider:{name}:{counter}``
(:data:`PROVIDER_COUNTERS`; time to first text as a sum of milliseconds and a count,
so that any reader can take the mean). Active streams are a gauge: each process
keeps its own count in ``P:stats:active:{instance}`` with an expiry it refreshes,
so a crashed process stops counting after a minute instead of leaving the total
wrong for ever.

Statistics never get in the way of answering: a Redis failure here is logged
(at most once a minute) and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.storage.keys import Keys

__all__ = [
    "COUNTERS",
    "PROVIDER_COUNTERS",
    "MemoryStats",
    "RedisStats",
    "Stats",
    "provider_counter",
]

log = logging.getLogger(__name__)

COUNTERS: Final = ("requests", "failures", "logins", "429s")
PROVIDER_COUNTERS: Final = ("requests", "failures", "fallbacks", "first_text_ms", "first_texts")
_PROVIDER_PREFIX: Final = "provider:"


def provider_counter(provider: str, counter: str) -> str:
    """The field of one provider's counter, e.g. ``provider:openai:requests``."""
    return f"{_PROVIDER_PREFIX}{provider}:{counter}"


def _by_provider(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for field, value in counters.items():
        if field.startswith(_PROVIDER_PREFIX):
            provider, _, counter = field.removeprefix(_PROVIDER_PREFIX).rpartition(":")
            if provider and counter in PROVIDER_COUNTERS:
                result.setdefault(provider, dict.fromkeys(PROVIDER_COUNTERS, 0))[counter] = value
    return result


class Stats(Protocol):
    async def incr(self, counter: str, amount: int = 1) -> None: ...

    async def set_active(self, streams: int) -> None:
        """This process's number of answers streaming right now."""
        ...

    async def snapshot(self) -> dict[str, int]:
        """Every counter, plus ``active`` summed over live processes."""
        ...

    async def refresh(self) -> None:
        """Keep this process's gauge alive (called periodically)."""
        ...

    async def providers(self) -> dict[str, dict[str, int]]:
        """Per provider that has counted anything: every :data:`PROVIDER_COUNTERS`."""
        ...


class MemoryStats:
    def __init__(self) -> None:
        self._counters: Counter[str] = Counter()
        self._active = 0

    async def incr(self, counter: str, amount: int = 1) -> None:
        self._counters[counter] += amount

    async def set_active(self, streams: int) -> None:
        self._active = streams

    async def snapshot(self) -> dict[str, int]:
        return {**{name: self._counters[name] for name in COUNTERS}, "active": self._active}

    async def refresh(self) -> None:
        pass

    async def providers(self) -> dict[str, dict[str, int]]:
        return _by_provider(dict(self._counters))


class RedisStats:
    GAUGE_TTL: Final = 90  # seconds; refreshed every GAUGE_TTL / 3

    def __init__(self, redis: Redis, keys: Keys, *, instance: str | None = None) -> None:
        self._redis, self._keys = redis, keys
        self._instance = instance or secrets.token_hex(6)
        self._active = 0
        self._last_error = 0.0

    @property
    def _gauge(self) -> str:
        return f"{self._keys.stats}:active:{self._instance}"

    def _failed(self, exc: RedisError) -> None:
        now = time.monotonic()
        if now - self._last_error > 60:
            self._last_error = now
            log.warning("statistics not recorded: Redis failed (%s)", exc)

    async def incr(self, counter: str, amount: int = 1) -> None:
        try:
            await self._redis.hincrby(self._keys.stats, counter, amount)
        except RedisError as exc:
            self._failed(exc)

    async def set_active(self, streams: int) -> None:
        self._active = streams
        await self.refresh()

    async def refresh(self) -> None:
        try:
            await self._redis.set(self._gauge, self._active, ex=self.GAUGE_TTL)
        except RedisError as exc:
            self._failed(exc)

    async def snapshot(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._keys.stats)
        counters = {_text(k): int(v) for k, v in raw.items()}
        active = 0
        async for key in self._redis.scan_iter(match=f"{self._keys.stats}:active:*", count=100):
            value = await self._redis.get(key)
            active += int(value or 0)
        return {**{name: counters.get(name, 0) for name in COUNTERS}, "active": active}

    async def providers(self) -> dict[str, dict[str, int]]:
        raw = await self._redis.hgetall(self._keys.stats)
        return _by_provider({_text(k): int(v) for k, v in raw.items()})


async def keep_refreshing(stats: Stats, interval: float = RedisStats.GAUGE_TTL / 3) -> None:
    """Run until cancelled: keeps this process's gauge from expiring."""
    while True:
        await asyncio.sleep(interval)
        await stats.refresh()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
