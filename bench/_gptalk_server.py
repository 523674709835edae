"""A FakeGPTalk in its own process, so that the client's CPU time is measured alone.

``python -m bench._gptalk_server --chars 100000 --step 10000`` serves
``markdown_answer(chars, seed)`` in cumulative lines of ``step`` more characters each,
without delay, prints its base URL on one line and runs until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench._common import markdown_answer
from tests.fake_gptalk import FakeGPTalk


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGPTalk(
        answer=markdown_answer(args.chars, args.seed),
        chunk_size=args.step,
        delay=0.0,
        max_uses=1_000_000,
    )
    url = await fake.start("127.0.0.1", 0)
    print(url, flush=True)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._gptalk_server")
    parser.add_argument("--chars", type=int, required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
