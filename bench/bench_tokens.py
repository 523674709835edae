"""The shared GPTalk token under a burst: N requests call ``TokenStore.acquire`` at once.

Isolates what ``bench_load`` shows as "time to GPTalk submit": each request reserves
one use of the shared token; with ``max_uses`` uses per login, N requests need
⌈N / max_uses⌉ logins, one at a time. Measured for the Redis store (through the bot's
own Redis client, ``bot.app.connect_redis``, on a private redis-server) and the
in-memory store: time until every request holds a token (p50/max), CPU seconds, Redis
commands executed (``CONFIG RESETSTAT`` before, ``INFO commandstats`` after).
``--stores 2`` splits the requests over two Redis stores, as two processes would.
A run that fails (e.g. the Redis pool's 5-s wait for a free connection) is reported as
such instead of ending the benchmark.

    .venv/bin/python -m bench.bench_tokens [--requests 50,500,5000] [--stores 1,2]
        [--login-delay 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import redis as redis_sync

from bench._common import load_average, machine, percentile, private_redis, table
from bot.app import connect_redis
from gptalk.auth import LoginResult, MemoryTokenStore, RedisTokenStore, TokenStore


def _commands(url: str) -> Counter[str]:
    client = redis_sync.Redis.from_url(url)
    try:
        stats: dict[str, dict[str, Any]] = client.info("commandstats")
        client.config_resetstat()
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


async def burst(
    stores: list[TokenStore], requests: int, max_uses: int, login_delay: float
) -> tuple[list[float], float, int]:
    logins = 0

    async def login() -> LoginResult:
        nonlocal logins
        logins += 1
        if login_delay:
            await asyncio.sleep(login_delay)
        expires = int(time.time()) + 3600
        token = f"token-{logins}"
        return LoginResult(token, expires, {"token": token, "expires_at": expires})

    start = time.perf_counter()
    waits: list[float] = []

    async def one(i: int) -> str:
        token = await stores[i % len(stores)].acquire(login, max_uses=max_uses)
        waits.append(time.perf_counter() - start)
        return token

    cpu0 = time.process_time()
    async with asyncio.timeout(60 + requests * (0.05 + login_delay)):
        tokens = await asyncio.gather(*(one(i) for i in range(requests)))
    assert max(Counter(tokens).values()) <= max_uses, "a token was overused"
    return waits, time.process_time() - cpu0, logins


async def run_one(
    kind: str, url: str, requests: int, max_uses: int, login_delay: float, n_stores: int
) -> list[object]:
    redis = await connect_redis(url)
    try:
        await redis.flushall()
        _commands(url)  # reset the counters
        stores: list[TokenStore] = (
            [RedisTokenStore(redis, prefix="bench") for _ in range(n_stores)]
            if kind == "redis"
            else [MemoryTokenStore()]
        )
        try:
            waits, cpu, logins = await burst(stores, requests, max_uses, login_delay)
        except Exception as exc:  # reported as the row's outcome
            _commands(url)  # reset for the next run
            failure = f"failed: {type(exc).__name__}: {exc}"[:60]
            return [kind, n_stores, requests, failure, *["-"] * 5]
    finally:
        await redis.aclose()
    commands = _commands(url) if kind == "redis" else Counter[str]()
    commands.pop("flushall", None)
    commands.pop("ping", None)
    return [
        kind,
        n_stores if kind == "redis" else "-",
        requests,
        logins,
        f"{percentile(waits, 50):.3f}",
        f"{max(waits):.3f}",
        f"{cpu:.2f}",
        f"{sum(commands.values()):,}" if kind == "redis" else "-",
        f"{commands['evalsha']:,}" if kind == "redis" else "-",
    ]


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tokens", description=__doc__)
    parser.add_argument("--requests", type=_ints, default=[50, 500, 5000])
    parser.add_argument("--stores", type=_ints, default=[1, 2], help="Redis stores (processes)")
    parser.add_argument("--max-uses", type=int, default=5)
    parser.add_argument("--login-delay", type=float, default=0.0, help="seconds per login")
    args = parser.parse_args(argv)

    print(f"# bench_tokens — {machine()}\n")
    rows = []
    with private_redis() as (url, _):
        for requests in args.requests:
            runs = [("redis", n) for n in args.stores] + [("memory", 1)]
            for kind, n_stores in runs:
                rows.append(
                    asyncio.run(
                        run_one(kind, url, requests, args.max_uses, args.login_delay, n_stores)
                    )
                )
                print("  …", " | ".join(map(str, rows[-1])), flush=True)
    print(
        f"N concurrent acquire() calls, max_uses {args.max_uses}, "
        f"each login takes {args.login_delay:g} s:\n"
    )
    headers = [
        "store",
        "stores",
        "requests",
        "logins",
        "p50 s to a token",
        "max s",
        "CPU s",
        "Redis commands (incl. in Lua)",
        "EVALSHA",
    ]
    print(table(headers, rows))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
