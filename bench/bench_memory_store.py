"""Cost of one write to the in-memory stores (memory mode, no ``REDIS_URL``) by their size.

For N = 1k/10k/100k live entries (conversations in ``MemoryHistoryStore``, users in
``MemoryUserLimits``), on a simulated clock: N entries are written, then ``--writes``
more writes to random existing entries are timed (process CPU µs per write), while
entries written earlier keep expiring (the clock moves ``ttl / N`` per write, so about
N entries stay alive). Where the store counts the entries its expiry sweeps examine
(``ExpiringMap.examined``), that count per write is printed too.

Run it on another checkout (e.g. an older commit) to compare: it uses only the stores'
public constructors with a ``clock``.

    .venv/bin/python -m bench.bench_memory_store [--sizes 1000,10000,100000] [--writes 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import bot.storage.history
from bench._common import load_average, machine, table
from bot.storage.history import MemoryHistoryStore, Turn
from bot.storage.keys import ConversationKey
from bot.storage.user_limits import MemoryUserLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _examined(store: object) -> int | None:
    for name in ("_data", "_users"):
        examined = getattr(getattr(store, name, None), "examined", None)
        if isinstance(examined, int):
            return examined
    return None


async def history(size: int, writes: int, rng: random.Random) -> list[Any]:
    ttl = 3600.0
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=ttl, clock=clock)
    turn = Turn(role="user", content="hello")
    step = ttl / size * 0.999  # about `size` conversations alive at any time
    for n in range(size):
        clock.now += step
        await store.append(ConversationKey(n), turn)
    before = _examined(store)
    cpu0 = time.process_time()
    for i in range(writes):
        clock.now += step
        await store.append(ConversationKey(size - 1 - rng.randrange(size // 2)), turn)
        if i % 2:
            await store.pop_answer(ConversationKey(size + i))  # a read-and-write miss
    cpu = time.process_time() - cpu0
    after = _examined(store)
    per_write = "—" if before is None or after is None else f"{(after - before) / writes:.2f}"
    return ["history", f"{size:,}", f"{cpu / writes * 1e6:,.1f}", per_write]


async def user_limits(size: int, writes: int, rng: random.Random) -> list[Any]:
    window = 60.0
    clock = Clock()
    limits = MemoryUserLimits(3, window, clock=clock)
    step = window / size * 0.999
    for n in range(size):
        clock.now += step
        await limits.hit(n)
    before = _examined(limits)
    cpu0 = time.process_time()
    for i in range(writes):
        clock.now += step
        await limits.hit(size + i if i % 2 else size - 1 - rng.randrange(size // 2))
    cpu = time.process_time() - cpu0
    after = _examined(limits)
    per_write = "—" if before is None or after is None else f"{(after - before) / writes:.2f}"
    return ["user limits", f"{size:,}", f"{cpu / writes * 1e6:,.1f}", per_write]


async def run(sizes: list[int], writes: int) -> list[list[Any]]:
    rng = random.Random(42)
    rows = []
    for size in sizes:
        rows.append(await history(size, writes, rng))
    for size in sizes:
        rows.append(await user_limits(size, writes, rng))
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_memory_store", description=__doc__)
    parser.add_argument("--sizes", type=_ints, default=[1000, 10_000, 100_000])
    parser.add_argument("--writes", type=int, default=2000)
    args = parser.parse_args(argv)
    print(f"# bench_memory_store — {machine()}\n")
    print(f"stores from {bot.storage.history.__file__}\n")
    headers = ["store", "live entries", "CPU µs per write", "entries examined per write"]
    print(table(headers, asyncio.run(run(args.sizes, args.writes))))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
