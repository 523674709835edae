"""Shared fixtures: a private redis-server for the session, a Redis client, a fake GPTalk."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from tests.bot_harness import BotHarness
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

_REDIS_START_TIMEOUT = 10.0
_REDIS_START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _start_redis(exe: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port; return it once PING answers, or fail with its log."""
    log_path = workdir / "redis-server.log"
    problems: list[str] = []
    for _ in range(_REDIS_START_ATTEMPTS):
        port = _free_port()
        cmd = [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        with log_path.open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        client = redis_sync.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        deadline = time.monotonic() + _REDIS_START_TIMEOUT
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return proc, port
                except redis_sync.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        code = proc.poll()
        _stop(proc)
        if code is None:
            problems.append(f"port {port}: no PING answer within {_REDIS_START_TIMEOUT} s")
            break  # a hang will not get better on another port
        problems.append(f"port {port}: redis-server exited with code {code}")
    log_text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    pytest.fail(
        "could not start a private redis-server: "
        + "; ".join(problems)
        + f"\n--- {log_path} ---\n{log_text}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private, throw-away redis-server started for this test session."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not on PATH; the tests need it "
            "(install it, e.g. `apt-get install redis-server`)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis")
    proc, port = _start_redis(exe, workdir)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the private server, flushed before the test."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_gptalk() -> AsyncIterator[FakeGPTalk]:
    """A started :class:`FakeGPTalk` with default settings; its base URL is ``.url``."""
    fake = FakeGPTalk()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """A started strict fake Bot API (real time)."""
    async with FakeTelegram() as fake:
        yield fake


BotFactory = Callable[..., Awaitable[BotHarness]]


@pytest.fixture
async def make_bot(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis, redis_url: str
) -> AsyncIterator[BotFactory]:
    """Start the whole bot (production factory) against the fakes and the private Redis.

    Keyword arguments are settings fields (``edit_interval=…``), plus ``limits=`` and
    ``redis_url=None`` for the in-process stores.
    """
    harnesses: list[BotHarness] = []

    async def factory(**settings: Any) -> BotHarness:
        settings.setdefault("redis_url", redis_url)
        harness = BotHarness(tg, fake_gptalk, **settings)
        harnesses.append(harness)
        return await harness.start()

    yield factory
    for harness in harnesses:
        await harness.stop()
