"""CPU per granted slot with N calls waiting: the scheduler against the limiter it replaced.

N calls wait at once for a slot, either one per private chat (N chats) or all in
one group (a raid). The budgets pace the grants; we measure the process CPU spent
per grant over ``--grants`` grants once everybody waits. A grant that wakes every
waiter costs O(N); the scheduler's should stay flat.

    .venv/bin/python -m bench.bench_scheduler                  # the scheduler
    git worktree add /tmp/before f0cc985                          # the old limiter
    .venv/bin/python -m bench.bench_scheduler --old-tree /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

from bench._common import load_average, machine, table

# Telegram's clock: real time for calls spread over chats (the bot-wide pace, ~25/s,
# sets the grant rate, as in production); 1000× faster for one group, whose 20 calls
# a minute would otherwise take hours.
CHATS_SCALE = 1.0
GROUP_SCALE = 0.001

Acquire = Callable[[int], Awaitable[None]]


def _old_module(tree: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_ratelimit", tree / "bot" / "ratelimit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_ratelimit"] = module
    spec.loader.exec_module(module)
    return module


def _acquirer(
    old: ModuleType | None, scale: float
) -> tuple[Acquire, Callable[[], Awaitable[None]]]:
    if old is not None:
        limiters = old.Limiters(old.TelegramLimits(time_scale=scale))

        async def old_acquire(chat_id: int) -> None:
            await limiters.for_chat(chat_id).acquire(old.Priority.HIGH)

        async def nothing() -> None:
            return None

        return old_acquire, nothing
    from bot.delivery.budgets import MemoryBudgets, Priority, TelegramLimits
    from bot.delivery.scheduler import Scheduler

    scheduler = Scheduler(MemoryBudgets(TelegramLimits(time_scale=scale)))

    async def acquire(chat_id: int) -> None:
        await scheduler.acquire(chat_id, Priority.ANSWER)

    return acquire, scheduler.aclose


async def per_grant(old: ModuleType | None, waiters: int, grants: int, group: bool) -> float:
    """Microseconds of CPU per grant with ``waiters`` calls waiting."""
    acquire, close = _acquirer(old, GROUP_SCALE if group else CHATS_SCALE)
    granted = 0
    marks: dict[int, float] = {}
    measured = asyncio.Event()

    async def one(chat_id: int) -> None:
        nonlocal granted
        await acquire(chat_id)
        granted += 1
        if granted in (1, 1 + grants):
            marks[granted] = time.process_time()
            if len(marks) == 2:
                measured.set()

    chats = [-100] * waiters if group else [1000 + i for i in range(waiters)]
    tasks = [asyncio.create_task(one(chat_id)) for chat_id in chats]
    try:
        await measured.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close()
    return (marks[1 + grants] - marks[1]) / grants * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scheduler", description=__doc__)
    parser.add_argument("--waiters", default="10,100,1000,10000")
    parser.add_argument("--grants", type=int, default=100)
    parser.add_argument("--old-tree", type=Path, help="a checkout whose bot/ratelimit.py to time")
    args = parser.parse_args(argv)
    old = _old_module(args.old_tree) if args.old_tree else None
    name = "old per-chat limiters (bot/ratelimit.py)" if old else "bot-wide scheduler"
    print(f"# bench_scheduler — {name} — {machine()}\n")
    rows = []
    for n in (int(v) for v in args.waiters.split(",")):
        grants = min(args.grants, n - 1)
        chats = asyncio.run(per_grant(old, n, grants, group=False))
        group = asyncio.run(per_grant(old, n, grants, group=True))
        rows.append([f"{n:,}", f"{chats:,.0f}", f"{group:,.0f}"])
    headers = ["waiting calls", "µs CPU per grant (one per chat)", "µs CPU per grant (one group)"]
    print(table(headers, rows))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
