"""Webhook mode: how fast replicas acknowledge Telegram while answers stream.

Three ``python -m bot`` replicas in webhook mode share a private redis-server; the
strict fake Bot API (in this process, real time) and the fake GPTalk (a child
process, streaming each answer for ``--stream-seconds``) stand in for the network.
The benchmark POSTs updates itself, round-robin over the replicas, as a load balancer
would, and times each POST until its response (Telegram redelivers an update whose
request takes too long, so the acknowledgement must not wait for the answer):

1. a burst: ``--conversations`` private prompts at once;
2. while those answers stream: ``--trickle`` more prompts, one at a time (0.1 s apart).

Then it waits until every answer is complete and reports the acknowledgement times,
the time to complete, the send/edit calls and 429s (summed over the replicas, as
Telegram counts them).

    .venv/bin/python -m bench.bench_webhook [--conversations 150] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import answer_for, load_average, machine, percentile, private_redis, table
from bench._flat import gptalk_server
from bot.delivery.render import render
from tests.bot_process import start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.webhook_process import PATH, SECRET, free_port, wait_ready, webhook_env


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    delay = args.stream_seconds / max(1, args.answer_chars // args.step)
    with gptalk_server(args.answer_chars, args.step, delay) as (gptalk_url, _pid):
        async with FakeTelegram() as tg, aiohttp.ClientSession() as http:
            return await _run(args, redis_url, gptalk_url, tg, http)


@contextlib.asynccontextmanager
async def replicas(
    args: argparse.Namespace,
    redis_url: str,
    gptalk_url: str,
    tg: FakeTelegram,
    http: aiohttp.ClientSession,
) -> AsyncIterator[list[str]]:
    """``--replicas`` webhook replicas, ready; yields their webhook URLs."""
    ports = [free_port() for _ in range(args.replicas)]
    health_ports = [free_port() for _ in range(args.replicas)]
    procs = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    try:
        for i, (port, health_port) in enumerate(zip(ports, health_ports, strict=True), 1):
            env = webhook_env(
                tg, FakeGPTalk(), port, health_port=health_port, GPTALK_URL=gptalk_url,
                REDIS_URL=redis_url, REPLICA_ID=f"bench-{i}", LOG_LEVEL="WARNING",
            )  # fmt: skip
            procs.append(await start_bot(env, workdir, stdout=asyncio.subprocess.DEVNULL))
        for health_port in health_ports:
            await wait_ready(http, health_port, timeout=60)
        yield [f"http://127.0.0.1:{port}{PATH}" for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)


async def _run(
    args: argparse.Namespace,
    redis_url: str,
    gptalk_url: str,
    tg: FakeTelegram,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:
    async with replicas(args, redis_url, gptalk_url, tg, http) as urls:
        tg.deliver = False  # this benchmark is the load balancer
        # chat -> (message id, the expected answer, asked at)
        asked: dict[int, tuple[int, str, float]] = {}

        def ask(n: int) -> dict[str, Any]:
            user = tg.add_user(10_000 + n, f"User{n}")
            question = tg.user_message(tg.private_chat(user), user, f"bench question {n}")
            expected = render(answer_for(n, args.answer_chars)).text
            asked[user["id"]] = (question["message_id"], expected, time.perf_counter())
            [update] = tg.take_updates()
            return update

        async def post(n: int, update: dict[str, Any]) -> float:
            start = time.perf_counter()
            status, _ = await tg.post_update(update, urls[n % len(urls)], SECRET)
            if status != 200:
                raise SystemExit(f"a replica answered {status}")
            return time.perf_counter() - start

        burst = [ask(n) for n in range(args.conversations)]
        started = time.perf_counter()
        burst_acks = await asyncio.gather(*(post(n, u) for n, u in enumerate(burst)))
        trickle_acks = []
        for n in range(args.conversations, args.conversations + args.trickle):
            trickle_acks.append(await post(n, ask(n)))
            await asyncio.sleep(0.1)

        done: dict[int, float] = {}
        deadline = time.perf_counter() + args.timeout
        while len(done) < len(asked) and time.perf_counter() < deadline:
            for chat_id, (message_id, expected, at) in asked.items():
                if chat_id not in done and tg.visible_text(chat_id, message_id) == expected:
                    done[chat_id] = time.perf_counter() - at
            await asyncio.sleep(0.1)
        return {
            "burst_acks": burst_acks,
            "trickle_acks": trickle_acks,
            "complete": list(done.values()),
            "asked": len(asked),
            "wall": time.perf_counter() - started,
            "sends": len([c for c in tg.calls_to("sendMessage") if c.ok]),
            "edits": len([c for c in tg.calls_to("editMessageText") if c.ok]),
            "too_many": tg.too_many_requests,
        }


def ms(values: list[float]) -> str:
    return " / ".join(f"{percentile(values, q) * 1000:.0f}" for q in (50, 95, 100))


def s(values: list[float]) -> str:
    return " / ".join(f"{percentile(values, q):.1f}" for q in (50, 95, 100))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_webhook", description=__doc__)
    parser.add_argument("--conversations", "-n", type=int, default=150)
    parser.add_argument("--trickle", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--answer-chars", type=int, default=600)
    parser.add_argument("--step", type=int, default=8, help="characters per stream line")
    parser.add_argument("--stream-seconds", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    print(f"{machine()}; load {load_average()}")
    with private_redis() as (redis_url, _pid):
        r = asyncio.run(run(args, redis_url))
    print(
        table(
            ["what", "value"],
            [
                ["replicas", args.replicas],
                ["answers complete", f"{len(r['complete'])}/{r['asked']}"],
                [f"ack of the burst of {args.conversations}, p50/p95/max ms", ms(r["burst_acks"])],
                [
                    f"ack of {args.trickle} prompts while the answers stream, p50/p95/max ms",
                    ms(r["trickle_acks"]),
                ],
                ["time to complete, p50/p95/max s", s(r["complete"])],
                ["sendMessage / editMessageText (ok)", f"{r['sends']} / {r['edits']}"],
                ["429s", r["too_many"]],
                ["wall time s", f"{r['wall']:.1f}"],
            ],
        )
    )
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
