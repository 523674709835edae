"""A separate OS process for the multi-process tests of the Redis budgets.

Prints ``ready``, waits for ``go`` on stdin (so that every worker starts at the same
moment), then asks one :class:`Scheduler` over :class:`RedisBudgets` for every slot
of its plan at once. Each grant is recorded with the time Redis counted it (Telegram
seconds, Redis's clock); at the end the grants are pushed as JSON to the Redis list
``--record`` and a JSON summary is printed.

A plan item is ``chat_id:priority:count`` (``priority``: answer, chatter or edit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from redis.asyncio import Redis

from bot.delivery.budgets import Priority, TelegramLimits, Verdict
from bot.delivery.redis_budgets import RedisBudgets
from bot.delivery.scheduler import Scheduler
from bot.storage.keys import Keys


class Recording:
    """The budgets, recording every grant with the time Redis counted it."""

    def __init__(self, inner: RedisBudgets, name: str) -> None:
        self.inner, self.limits, self.name = inner, inner.limits, name
        self.grants: list[tuple[str, int, int, float]] = []
        self.fallbacks = 0

    def now(self) -> float:
        return self.inner.now()

    async def take(self, chat_id: int, priority: Priority) -> Verdict:
        verdict = await self.inner.take(chat_id, priority)
        if self.inner.redis_down:
            self.fallbacks += 1  # not counted in Redis: the test must see none
        elif verdict.wait == 0:
            assert self.inner.last_grant_at is not None
            self.grants.append((self.name, chat_id, int(priority), self.inner.last_grant_at))
        return verdict

    async def settle(self, ticket: str) -> None:
        await self.inner.settle(ticket)

    async def block(self, chat_id: int, seconds: float) -> None:
        await self.inner.block(chat_id, seconds)


def parse_plan(items: list[str]) -> list[tuple[int, Priority]]:
    calls = []
    for item in items:
        chat, priority, count = item.split(":")
        calls += [(int(chat), Priority[priority.upper()])] * int(count)
    return calls


async def run(args: argparse.Namespace) -> dict[str, int]:
    redis = Redis.from_url(args.redis_url)
    budgets = RedisBudgets(redis, Keys(args.prefix), TelegramLimits(time_scale=args.scale))
    recording = Recording(budgets, args.name)
    scheduler = Scheduler(recording)
    calls = parse_plan(args.plan)
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(scheduler.acquire(chat, priority) for chat, priority in calls))
        if recording.grants:
            await redis.rpush(args.record, *(json.dumps(g) for g in recording.grants))
    finally:
        await scheduler.aclose()
        await budgets.aclose()
        await redis.aclose()
    return {"grants": len(recording.grants), "fallbacks": recording.fallbacks}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="gptalk")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--record", default="gptalk:test:grants")
    parser.add_argument("plan", nargs="+")
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
