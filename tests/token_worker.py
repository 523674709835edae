"""A separate OS process for the multi-process token tests.

Prints ``ready``, waits for ``go`` on stdin (so that every worker starts at the same
moment), makes ``--requests`` requests through one ``GPTalkClient`` sharing its
token through Redis, ``--concurrency`` at a time, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from redis.asyncio import Redis

from gptalk import GPTalkClient, RedisTokenStore


async def run(args: argparse.Namespace) -> dict[str, int]:
    redis = Redis.from_url(args.redis_url)
    store = RedisTokenStore(redis, prefix=args.prefix)
    limit = asyncio.Semaphore(args.concurrency)
    try:
        async with GPTalkClient(base_url=args.url, token_store=store) as client:

            async def one(i: int) -> str:
                async with limit:
                    return await client.complete([{"role": "user", "content": f"q{i}"}])

            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            answers = await asyncio.gather(*(one(i) for i in range(args.requests)))
    finally:
        await redis.aclose()
    return {"answers": len(answers), "distinct": len(set(answers))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="gptalk")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
