"""Grants per second and Redis round trips per grant: in-process vs Redis budgets.

``--waiters`` calls wait at once, one per private chat; each asks again as soon as it is
granted, so that many always wait. One :class:`Scheduler` hands out the slots over
:class:`MemoryBudgets` or :class:`RedisBudgets` (through the bot's own Redis client,
``bot.app.connect_redis``, on a private redis-server). Measured over ``--seconds`` after
a warm-up: grants/s, budget checks per grant, Redis round trips per grant (EVALSHA and
every other command a client sent, from ``INFO commandstats``; commands run inside the
script are counted apart), process CPU per grant and redis-server CPU per grant.

At ``--scales 0.0001`` Telegram's windows pass 10,000× faster, so the backend (not
Telegram's budget) bounds the grant rate; at ``1`` the budget does (~25 grants/s).

    .venv/bin/python -m bench.bench_redis_budgets [--waiters 1000] [--seconds 5]
        [--scales 0.0001,1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import redis as redis_sync

from bench._common import load_average, machine, private_redis, process_cpu_seconds, table
from bot.app import connect_redis
from bot.delivery.budgets import Budgets, MemoryBudgets, Priority, TelegramLimits
from bot.delivery.redis_budgets import RedisBudgets
from bot.delivery.scheduler import Scheduler
from bot.storage.keys import Keys

WARMUP = 1.0
# Commands that run inside the scripts (not round trips of their own).
IN_SCRIPT = {"get", "set", "zadd", "zcard", "zrange", "zremrangebyscore", "pexpire", "time"}


def _commands(url: str) -> Counter[str]:
    client = redis_sync.Redis.from_url(url)
    try:
        stats: dict[str, dict[str, Any]] = client.info("commandstats")
        client.config_resetstat()
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


async def measure(
    backend: str, waiters: int, seconds: float, scale: float, url: str, redis_pid: int
) -> list[str]:
    limits = TelegramLimits(time_scale=scale)
    redis = await connect_redis(url) if backend == "redis" else None
    budgets: Budgets
    if redis is not None:
        await redis.flushall()
        budgets = RedisBudgets(redis, Keys("bench"), limits)
    else:
        budgets = MemoryBudgets(limits)
    scheduler = Scheduler(budgets)

    async def caller(chat_id: int) -> None:
        while True:
            await scheduler.acquire(chat_id, Priority.ANSWER)

    tasks = [asyncio.create_task(caller(1000 + i)) for i in range(waiters)]
    try:
        await asyncio.sleep(WARMUP)
        _commands(url)  # resets the counters
        grants, checks = scheduler.grants, scheduler.checks
        redis_cpu = process_cpu_seconds(redis_pid)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        grants, checks = scheduler.grants - grants, scheduler.checks - checks
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        redis_cpu = process_cpu_seconds(redis_pid) - redis_cpu
        commands = _commands(url)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
        if redis is not None:
            await redis.aclose()
    commands.pop("info", None)  # ours
    commands.pop("config|resetstat", None)
    trips = sum(n for name, n in commands.items() if name not in IN_SCRIPT)
    inside = sum(n for name, n in commands.items() if name in IN_SCRIPT)
    on_redis = backend == "redis"
    return [
        backend,
        f"{scale:g}",
        f"{grants / wall:,.0f}",
        f"{checks / grants:.2f}",
        f"{trips / grants:.2f}" if on_redis else "0",
        f"{inside / grants:.1f}" if on_redis else "–",
        f"{cpu / grants * 1e6:,.0f}",
        f"{redis_cpu / grants * 1e6:,.0f}" if on_redis else "–",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_redis_budgets", description=__doc__
    )
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scales", default="0.0001,1")
    args = parser.parse_args(argv)
    print(f"# bench_redis_budgets — {args.waiters:,} waiting calls — {machine()}\n")
    rows = []
    with private_redis() as (url, pid):
        for scale in (float(s) for s in args.scales.split(",")):
            for backend in ("memory", "redis"):
                rows.append(
                    asyncio.run(measure(backend, args.waiters, args.seconds, scale, url, pid))
                )
    headers = [
        "budgets",
        "time scale",
        "grants/s",
        "checks per grant",
        "Redis round trips per grant",
        "commands in the script per grant",
        "µs CPU per grant (bot)",
        "µs CPU per grant (redis-server)",
    ]
    print(table(headers, rows))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
