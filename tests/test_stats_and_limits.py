"""Unit tests of the /stats counters and of USER_RATE_LIMIT's per-user limits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.storage.keys import Keys
from bot.storage.stats import COUNTERS, MemoryStats, RedisStats, keep_refreshing
from bot.storage.user_limits import (
    Decision,
    MemoryUserLimits,
    RedisUserLimits,
    UserLimits,
    Verdict,
)

KEYS = Keys("gptalk")


# --- stats ---------------------------------------------------------------------------------


async def test_memory_stats_counts_and_reports_active() -> None:
    stats = MemoryStats()
    assert await stats.snapshot() == {**dict.fromkeys(COUNTERS, 0), "active": 0}
    await stats.incr("requests")
    await stats.incr("requests", 2)
    await stats.incr("429s")
    await stats.set_active(2)
    await stats.refresh()
    assert await stats.snapshot() == {
        "requests": 3,
        "failures": 0,
        "logins": 0,
        "429s": 1,
        "active": 2,
    }


async def test_redis_stats_are_shared_and_sum_the_gauges(redis: aioredis.Redis) -> None:
    one, two = RedisStats(redis, KEYS), RedisStats(redis, KEYS)
    await one.incr("requests")
    await two.incr("requests", 4)
    await two.incr("failures")
    await one.incr("logins")
    await one.set_active(2)
    await two.set_active(3)
    expected = {"requests": 5, "failures": 1, "logins": 1, "429s": 0, "active": 5}
    assert await one.snapshot() == expected
    assert await two.snapshot() == expected
    assert await redis.hgetall("gptalk:stats") == {
        b"requests": b"5",
        b"failures": b"1",
        b"logins": b"1",
    }
    await two.set_active(0)
    assert (await one.snapshot())["active"] == 2


async def test_redis_stats_prefixes_are_separate(redis: aioredis.Redis) -> None:
    await RedisStats(redis, Keys("a")).incr("requests")
    await RedisStats(redis, Keys("a")).set_active(1)
    assert await RedisStats(redis, Keys("b")).snapshot() == {
        **dict.fromkeys(COUNTERS, 0),
        "active": 0,
    }


async def test_a_dead_instances_gauge_expires(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisStats, "GAUGE_TTL", 1)
    alive, dead = RedisStats(redis, KEYS), RedisStats(redis, KEYS)
    await alive.set_active(1)
    await dead.set_active(4)
    assert (await alive.snapshot())["active"] == 5
    refresher = asyncio.create_task(keep_refreshing(alive, interval=0.2))
    try:
        await asyncio.sleep(1.5)  # `dead` stopped refreshing: its gauge is gone
        assert (await alive.snapshot())["active"] == 1
    finally:
        refresher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await refresher


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_redis_failures_do_not_get_in_the_way(caplog: pytest.LogCaptureFixture) -> None:
    broken = aioredis.Redis(
        host="127.0.0.1",
        port=_closed_port(),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),  # fail at once instead of redis-py's ~4 s of retries
    )
    try:
        stats = RedisStats(broken, KEYS)
        started = time.monotonic()
        await stats.incr("requests")
        await stats.incr("failures")
        await stats.set_active(1)
        await stats.refresh()
        assert time.monotonic() - started < 5
    finally:
        await broken.aclose()
    warnings = [r for r in caplog.records if "statistics not recorded" in r.getMessage()]
    assert len(warnings) == 1  # logged, but not once per call


# --- user limits: one contract, two implementations ------------------------------------------

LimitsFactory = Callable[[int, float], Awaitable[UserLimits]]


@pytest.fixture(params=["memory", "redis"])
def make_limits(request: pytest.FixtureRequest, redis: aioredis.Redis) -> LimitsFactory:
    async def factory(limit: int, window: float) -> UserLimits:
        if request.param == "memory":
            return MemoryUserLimits(limit, window)
        return RedisUserLimits(redis, KEYS, limit, window)

    return factory


async def verdicts(limits: UserLimits, user_id: int, count: int) -> list[Verdict]:
    return [(await limits.hit(user_id)).verdict for _ in range(count)]


async def test_limit_then_one_notice_then_silence(make_limits: LimitsFactory) -> None:
    limits = await make_limits(3, 60.0)
    assert await verdicts(limits, 1, 3) == [Verdict.ALLOW] * 3
    notice = await limits.hit(1)
    assert notice.verdict is Verdict.NOTIFY
    assert 55 < notice.retry_in <= 60
    assert await verdicts(limits, 1, 20) == [Verdict.IGNORE] * 20


async def test_users_are_independent(make_limits: LimitsFactory) -> None:
    limits = await make_limits(1, 60.0)
    assert await verdicts(limits, 1, 3) == [Verdict.ALLOW, Verdict.NOTIFY, Verdict.IGNORE]
    assert await verdicts(limits, 2, 2) == [Verdict.ALLOW, Verdict.NOTIFY]
    assert (await limits.hit(3)).verdict is Verdict.ALLOW


async def test_allowed_again_after_the_window(make_limits: LimitsFactory) -> None:
    limits = await make_limits(2, 0.5)
    assert await verdicts(limits, 1, 4) == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.NOTIFY,
        Verdict.IGNORE,
    ]
    await asyncio.sleep(0.6)
    assert await verdicts(limits, 1, 4) == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.NOTIFY,  # a new flood gets a new notice
        Verdict.IGNORE,
    ]


async def test_refused_prompts_do_not_count(make_limits: LimitsFactory) -> None:
    limits = await make_limits(2, 0.5)
    started = time.monotonic()
    assert (await limits.hit(1)).verdict is Verdict.ALLOW  # frees its slot at ~0.5 s
    await asyncio.sleep(0.25)
    assert await verdicts(limits, 1, 10) == [
        Verdict.ALLOW,  # frees its slot at ~0.75 s
        Verdict.NOTIFY,
        *[Verdict.IGNORE] * 8,
    ]
    await asyncio.sleep(0.62 - (time.monotonic() - started))
    # Only the first prompt's slot is free: had the refused ones counted, none would be.
    assert await verdicts(limits, 1, 2) == [Verdict.ALLOW, Verdict.NOTIFY]


async def test_notice_tells_when_to_retry(make_limits: LimitsFactory) -> None:
    limits = await make_limits(1, 0.5)
    await limits.hit(1)
    await asyncio.sleep(0.2)
    notice = await limits.hit(1)
    assert notice.verdict is Verdict.NOTIFY
    assert 0.1 < notice.retry_in <= 0.35


async def test_a_prompt_of_several_messages_counts_each_or_none(
    make_limits: LimitsFactory,
) -> None:
    # A split paste: one prompt, several messages.
    limits = await make_limits(3, 60.0)
    assert (await limits.hit(1, 2)).verdict is Verdict.ALLOW
    refused = await limits.hit(1, 2)  # one slot left: refused whole
    assert refused.verdict is Verdict.NOTIFY
    assert 55 < refused.retry_in <= 60
    assert (await limits.hit(1, 2)).verdict is Verdict.IGNORE
    # The refused ones took nothing: the last slot is still there.
    assert await verdicts(limits, 1, 2) == [Verdict.ALLOW, Verdict.IGNORE]


async def test_a_prompt_waits_until_enough_slots_are_free(make_limits: LimitsFactory) -> None:
    limits = await make_limits(3, 0.6)
    assert (await limits.hit(1)).verdict is Verdict.ALLOW
    await asyncio.sleep(0.3)
    assert await verdicts(limits, 1, 2) == [Verdict.ALLOW, Verdict.ALLOW]
    # Two messages need the two oldest slots: the second frees at ~0.6 s from now.
    notice = await limits.hit(1, 2)
    assert notice.verdict is Verdict.NOTIFY
    assert 0.45 < notice.retry_in <= 0.6
    # More messages than the limit never fit: told to wait a whole window.
    assert (await limits.hit(2, 4)) == Decision(Verdict.NOTIFY, 0.6)


async def test_redis_limits_are_shared_and_expire(redis: aioredis.Redis) -> None:
    one = RedisUserLimits(redis, KEYS, 2, 60.0)
    two = RedisUserLimits(redis, KEYS, 2, 60.0)  # another process
    assert (await one.hit(7)).verdict is Verdict.ALLOW
    assert (await two.hit(7)).verdict is Verdict.ALLOW
    assert (await one.hit(7)).verdict is Verdict.NOTIFY
    assert (await two.hit(7)).verdict is Verdict.IGNORE
    assert await redis.zcard("gptalk:ratelimit:7") == 2
    assert 0 < await redis.pttl("gptalk:ratelimit:7") <= 60_000
