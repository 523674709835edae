"""Shared fixtures: a private redis-server for the session, a Redis client, a fake GPTalk."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from yarl import URL

from tests.bot_harness import BotHarness
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.redis_server import RedisStartError, start_redis, stop_process
from tests.slow_link import SlowLink


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
    try:
        proc, port = start_redis(exe, workdir)
    except RedisStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


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
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking HTTP to a bot process (webhook, health listener)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


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


@pytest.fixture
async def refusing_proxy() -> AsyncIterator[str]:
    """``host:port`` of an HTTP proxy that answers every request, ``CONNECT`` included,
    with 407 Proxy Authentication Required. For an https:// target aiohttp's error then
    quotes the proxy's URL, ``user:password@`` and all."""

    async def refuse(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="test"'})

    # The low-level server: the router would answer CONNECT host:443 with 404.
    runner = web.ServerRunner(web.Server(refuse), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


BotFactory = Callable[..., Awaitable[BotHarness]]
FarRedis = Callable[[float], Awaitable[str]]


@pytest.fixture
async def far_redis(redis_url: str) -> AsyncIterator[FarRedis]:
    """``await far_redis(delay)``: the URL of the test's Redis as a replica far from it
    sees it, every answer ``delay`` seconds late (:class:`SlowLink`). Requested before
    ``make_bot``, the links outlive the replicas that use them."""
    links: list[SlowLink] = []

    async def link(delay: float) -> str:
        links.append(await SlowLink(URL(redis_url).port or 6379, delay=delay).start())
        return links[-1].url

    yield link
    for made in links:
        await made.aclose()


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


@pytest.fixture
async def procs() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts (``python -m bot`` mostly): killed at its end if still
    running, so that a failing test leaves none behind."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
