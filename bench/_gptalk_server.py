"""A FakeGPTalk in its own process, so that the client's CPU time is measured alone.

``python -m bench._gptalk_server --chars 100000 --step 10000`` serves
``markdown_answer(chars, seed)`` in cumulative lines of ``step`` more characters each,
without delay (``--delay`` seconds between lines otherwise), prints its base URL on one
line and runs until stdin closes. With ``--per-question``, a prompt holding
``bench question N`` gets ``answer_for(N, chars)`` (the load benchmark's answers).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from bench._common import answer_for, markdown_answer
from tests.fake_gptalk import FakeGPTalk

_QUESTION = re.compile(r"bench question (\d+)")


async def _serve(args: argparse.Namespace) -> None:
    def per_question(prompt: str) -> str:
        match = _QUESTION.search(prompt)
        return answer_for(int(match.group(1)) if match else -1, args.chars)

    fake = FakeGPTalk(
        answer=markdown_answer(args.chars, args.seed),
        reply=per_question if args.per_question else None,
        chunk_size=args.step,
        delay=args.delay,
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
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between lines")
    parser.add_argument("--per-question", action="store_true")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
