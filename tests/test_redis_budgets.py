"""The Redis budgets beyond the contract: Redis's clock, several OS processes, outages.

The semantics (the same verdicts as the in-process budgets) are in
``test_budgets_contract.py``. Here: the keys and their expiry, three worker processes
(``tests/budgets_worker.py``) sharing one Redis, and Redis going away mid-run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.app import build_application, connect_redis
from bot.config import load_settings
from bot.delivery.budgets import FLIGHT_LAPSE, MemoryBudgets, Priority, Scope, TelegramLimits
from bot.delivery.redis_budgets import RedisBudgets
from bot.delivery.scheduler import Scheduler
from bot.storage.keys import Keys
from tests.test_faults_redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RECORD = "gptalk:test:grants"
Grant = tuple[str, int, int, float]  # process, chat, priority, Redis time (Telegram s)


# --- wiring -----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_redis", [True, False], ids=["REDIS_URL", "no REDIS_URL"])
async def test_the_app_shares_budgets_through_redis_when_it_has_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, with_redis: bool
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("BOT_TOKEN", "123456:TEST")
    monkeypatch.setenv("REDIS_URL", redis_url if with_redis else "")
    monkeypatch.setenv("TELEGRAM_TIME_SCALE", "0.1")
    app = await build_application(load_settings())
    try:
        budgets = app.scheduler.budgets
        assert isinstance(budgets, RedisBudgets if with_redis else MemoryBudgets)
        assert budgets.limits.time_scale == 0.1
    finally:
        await app.aclose()


# --- keys --------------------------------------------------------------------------------------


async def test_every_key_is_under_the_prefix_and_expires_when_idle(redis: aioredis.Redis) -> None:
    scale = 0.01  # Telegram's 61 s group window passes in 0.61 s
    budgets = RedisBudgets(redis, Keys("bot1"), TelegramLimits(time_scale=scale))
    assert (await budgets.take(7, Priority.ANSWER)).wait == 0
    assert (await budgets.take(-7, Priority.CHATTER)).wait == 0
    await budgets.block(8, 5.0)
    stored = {key.decode(): await redis.pttl(key) for key in await redis.keys("*")}
    window = {  # the longest a key may live, in real ms
        "bot1:telegram:bot": FLIGHT_LAPSE + 1.0,  # a call in flight, never settled
        "bot1:telegram:bucket:7": 1.0,  # one token to refill
        "bot1:telegram:answered:7": 1.0,  # the edit interval
        "bot1:telegram:window:-7": 61.0,
        "bot1:telegram:block:8": 5.0,
    }
    assert set(stored) == set(window)
    for key, pttl in stored.items():
        assert 0 < pttl <= window[key] * scale * 1000 + 1, key
    await asyncio.sleep(61.0 * scale + 0.2)
    assert await redis.keys("*") == []


# --- several processes -------------------------------------------------------------------------


async def run_workers(redis_url: str, plans: dict[str, list[str]], scale: float) -> list[Grant]:
    procs = {}
    for name, plan in plans.items():
        args = ["--redis-url", redis_url, "--scale", str(scale), "--name", name, "--record", RECORD]
        procs[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.budgets_worker",
            *args,
            "--",  # chat ids of groups are negative
            *plan,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
    for proc in procs.values():  # every worker is up before any starts: they really overlap
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    for name, proc in procs.items():
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, name
        summary = json.loads(out.splitlines()[-1])
        assert summary["fallbacks"] == 0, name  # every grant was counted in Redis
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.lrange(RECORD, 0, -1)  # type: ignore[misc]
    finally:
        await client.aclose()
    return sorted((tuple(json.loads(g)) for g in raw), key=lambda g: g[3])  # type: ignore[misc]


def replay(grants: list[Grant]) -> None:
    """Every grant, in the order Redis counted it, is a grant of the in-process budgets
    too: together the processes kept exactly the one-process semantics (bucket,
    windows, reserves, edit interval)."""
    now = [0.0]
    memory = MemoryBudgets(TelegramLimits(), clock=lambda: now[0])
    for grant in grants:
        _, chat_id, priority, at = grant
        now[0] = at
        verdict = memory.check(chat_id, Priority(priority))
        # Redis's times are ~1e10 Telegram seconds at scale 0.1: float rounding only.
        assert verdict.wait < 1e-4, (grant, verdict)
        if verdict.wait > 0:
            now[0] = at + verdict.wait
            verdict = memory.check(chat_id, Priority(priority))
            assert verdict.wait == 0, grant
        # The workers settle each call as it is granted (Scheduler.acquire): the grant
        # times are what Redis counted (settling later would only count later).
        assert verdict.ticket is not None
        memory.settle_now(verdict.ticket)


def most_in_any(times: list[float], length: float) -> int:
    """The most calls in any window [t, t + length) of ``times`` (sorted)."""
    return max(
        (sum(1 for t in times[i:] if t < start + length) for i, start in enumerate(times)),
        default=0,
    )


async def test_three_processes_keep_telegrams_limits_together(
    redis: aioredis.Redis, redis_url: str
) -> None:
    plan = (
        [f"{chat}:answer:3" for chat in range(1, 13)]  # 12 private chats, busy in each process
        + [f"{chat}:edit:2" for chat in range(1, 13)]
        + [f"{chat}:chatter:1" for chat in range(1, 13)]
        + [f"{chat}:answer:1" for chat in range(1000, 1060)]  # 60 more, one call each
        + ["-1:answer:8", "-1:chatter:2", "-1:edit:2"]  # two groups: over one window each
        + ["-2:answer:8", "-2:chatter:2", "-2:edit:2"]
    )
    per_process = 12 * 6 + 60 + 2 * 12
    grants = await run_workers(redis_url, {f"p{i}": plan for i in range(3)}, scale=0.1)
    assert len(grants) == 3 * per_process
    assert len({g[0] for g in grants}) == 3

    times = [g[3] for g in grants]
    assert most_in_any(times, 1.0) <= 30  # Telegram's bot-wide limit, summed over processes
    assert most_in_any(times, 1.0) == 28  # ours, and it was reached: the test pushed it
    by_chat: dict[int, list[float]] = defaultdict(list)
    for _, chat_id, _, at in grants:
        by_chat[chat_id].append(at)
    for group in (-1, -2):
        assert len(by_chat[group]) == 36
        assert most_in_any(by_chat[group], 60.0) <= 20
    limits = TelegramLimits()
    for chat_id in range(1, 13):
        calls = by_chat[chat_id]
        assert len(calls) == 18
        for i, start in enumerate(calls):  # n calls in any interval: burst + rate × length
            for j in range(i + 1, len(calls)):
                allowed = limits.private_burst + limits.private_rate * (calls[j] - start)
                assert j - i + 1 <= allowed + 1e-4, (chat_id, i, j)
    replay(grants)


async def test_edits_of_one_process_do_not_starve_answers_of_another(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Process A floods intermediate edits in chat 5 while process B answers there: an
    edit must leave a token (the reserve) and B always wants it, so A's edits wait
    until B's answers are out, although A asks first and often."""
    answers = 8
    plans = {"A": ["5:edit:12"], "B": [f"5:answer:{answers}"]}
    # 1 Telegram s = 0.2 s: B has that long to take each token before an edit could.
    grants = await run_workers(redis_url, plans, scale=0.2)
    replay(grants)  # no edit went while the bucket was within its reserve
    b_times = [at for name, _, _, at in grants if name == "B"]
    assert len(b_times) == answers
    edits_meanwhile = [at for name, _, _, at in grants if name == "A" and at < b_times[-1]]
    assert len(edits_meanwhile) <= 1  # at most one, right at the start (it asks first)
    # B went at the bucket's pace: a burst of 2 (less a token for that edit), then 1/s
    assert b_times[-1] - b_times[0] <= answers + 0.5


# --- Redis goes away ---------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH", pytrace=False)
    server = RedisServer(exe, tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = await connect_redis(own_redis.url)  # the bot's own client settings
    try:
        yield client
    finally:
        await client.aclose()


def budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "bot.delivery.redis_budgets"
    ]


async def back_in_redis(budgets: RedisBudgets) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while budgets.redis_down:
        assert loop.time() < deadline, "Redis answers, but the budgets do not use it again"
        await asyncio.sleep(0.02)


async def test_redis_gone_the_process_keeps_its_own_budgets_then_shares_again(
    own_redis: RedisServer, own_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.delivery.redis_budgets")
    keys = Keys("gptalk")
    budgets = RedisBudgets(own_client, keys, TelegramLimits(time_scale=0.01), retry_every=0.05)
    scheduler = Scheduler(budgets)
    try:
        await scheduler.acquire(1)
        assert await own_client.exists(keys.telegram_bucket(1))
        own_redis.stop()

        times = []
        for _ in range(6):  # paced by this process's bucket now
            await asyncio.wait_for(scheduler.acquire(1), 10)
            times.append(budgets.now())
        await asyncio.wait_for(asyncio.gather(*(scheduler.acquire(100 + i) for i in range(60))), 10)
        await scheduler.block(2, 1.0)  # no error either
        assert budgets.redis_down
        assert times[-1] - times[0] >= 3.9  # a fresh bucket here: a burst of 2, then 1/s
        assert len(budget_warnings(caplog)) == 1  # one per outage, not one per call

        own_redis.restart()  # empty: nothing is persisted
        await back_in_redis(budgets)
        await scheduler.acquire(3)
        assert await own_client.exists(keys.telegram_bucket(3))  # counted in Redis again
        assert len(budget_warnings(caplog)) == 1
    finally:
        await scheduler.aclose()
        await budgets.aclose()


async def test_a_hung_redis_costs_one_timeout_then_the_process_budgets_answer(
    own_redis: RedisServer, own_client: aioredis.Redis
) -> None:
    budgets = RedisBudgets(own_client, Keys("gptalk"), TelegramLimits(time_scale=0.01), timeout=0.3)
    scheduler = Scheduler(budgets)
    try:
        await scheduler.acquire(1)
        own_redis.pause()
        await asyncio.wait_for(asyncio.gather(*(scheduler.acquire(100 + i) for i in range(30))), 5)
        assert budgets.redis_down
    finally:
        own_redis.resume()
        await scheduler.aclose()
        await budgets.aclose()


async def test_a_takeover_knows_the_calls_this_process_made_through_redis(
    own_redis: RedisServer, own_client: aioredis.Redis
) -> None:
    budgets = RedisBudgets(own_client, Keys("gptalk"), TelegramLimits(global_limit=3))
    try:
        flying = [await budgets.take(chat_id, Priority.ANSWER) for chat_id in (1, 2, 3)]
        assert all(verdict.wait == 0 for verdict in flying)
        own_redis.stop()
        # The process's own budgets take over with the three calls still in flight:
        # no fourth call in the same second, whoever counts.
        taken_over = await budgets.take(4, Priority.ANSWER)
        assert budgets.redis_down
        assert taken_over.scope is Scope.BOT
        for verdict in flying:
            assert verdict.ticket is not None
            await budgets.settle(verdict.ticket)
        assert (await budgets.take(4, Priority.ANSWER)).scope is Scope.BOT  # answered just now
    finally:
        await budgets.aclose()
