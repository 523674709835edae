"""The bot-wide Telegram budget under a burst: N chats each want one HIGH slot at once.

Isolates the rate limiter (``bot.ratelimit``, no network): every chat has its own
``ChatLimiter``; they share the bot-wide token bucket (25/s, burst 20). Measured: wall
time until every chat got its slot (bounded by the pace: (N - 20) / 25 s), CPU seconds,
and how often the limiters re-evaluated a waiting call (``ChatLimiter._delay_for``,
wrapped in this process only) per granted slot.

    .venv/bin/python -m bench.bench_ratelimit [--chats 100,300,500]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._common import load_average, machine, percentile, table
from bot.ratelimit import ChatLimiter, Limiters, Priority


async def burst(chats: int) -> list[object]:
    evaluations = 0
    original = ChatLimiter._delay_for

    def counted(limiter: ChatLimiter, me: Any) -> float:
        nonlocal evaluations
        evaluations += 1
        return original(limiter, me)

    ChatLimiter._delay_for = counted  # type: ignore[method-assign,assignment]
    try:
        limiters = Limiters()
        start = time.perf_counter()
        waits: list[float] = []

        async def chat(index: int) -> None:
            await limiters.for_chat(1_000 + index).acquire(Priority.HIGH)
            waits.append(time.perf_counter() - start)

        cpu0 = time.process_time()
        async with asyncio.timeout(30 + chats / 10):
            await asyncio.gather(*(chat(i) for i in range(chats)))
        cpu = time.process_time() - cpu0
    finally:
        ChatLimiter._delay_for = original  # type: ignore[method-assign]
    return [
        chats,
        f"{max(0, chats - 20) / 25:.1f}",
        f"{percentile(waits, 50):.1f}",
        f"{max(waits):.1f}",
        f"{cpu:.2f}",
        f"{evaluations:,}",
        f"{evaluations / chats:.0f}",
        f"{cpu / evaluations * 1e6:.0f}",
    ]


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ratelimit", description=__doc__)
    parser.add_argument("--chats", type=_ints, default=[100, 300, 500])
    args = parser.parse_args(argv)
    print(f"# bench_ratelimit — {machine()}\n")
    rows = [asyncio.run(burst(chats)) for chats in args.chats]
    headers = [
        "chats",
        "pace bound s",
        "p50 s to a slot",
        "max s",
        "CPU s",
        "evaluations",
        "per slot",
        "µs CPU per evaluation",
    ]
    print("N chats × one HIGH acquire() each, at once (default TelegramLimits):\n")
    print(table(headers, rows))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
