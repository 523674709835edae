"""The health listener (``HEALTH_HOST``:``HEALTH_PORT``) of ``python -m bot`` as a real
process, in both modes, apart from the webhook listener."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.webhook_process import (
    PATH,
    free_port,
    get,
    listening_addresses,
    metric,
    wait_ready,
    webhook_env,
)

HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")


# Redis flushed for each test: every fake Bot API numbers its updates from 1, and claims
# last 24 h.
pytestmark = pytest.mark.usefixtures("redis")


async def stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def test_polling_serves_health_on_loopback_by_default(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    health = free_port()
    env = bot_env(tg, fake_gptalk, REDIS_URL=redis_url, HEALTH_PORT=str(health), REPLICA_ID="p")
    proc = await start_bot(env, tmp_path)
    procs.append(proc)
    await wait_ready(http, health)
    assert not tg.calls_to("setWebhook")  # polling
    assert listening_addresses(health) == {"127.0.0.1"}  # HEALTH_HOST's default
    assert await get(http, health, "/healthz") == (200, "ok\n")
    assert await get(http, health, "/readyz") == (200, "ready\n")
    status, text = await get(http, health, "/metrics")
    assert (status, metric(text, "gptalk_bot_replica", replica="p")) == (200, 1)
    await stop(proc)


async def test_webhook_listener_serves_only_the_webhook_path(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    port, health = free_port(), free_port()
    # Another loopback address than the webhook's: shows which listener binds HEALTH_HOST.
    env = webhook_env(
        tg, fake_gptalk, port, health_port=health, REDIS_URL=redis_url, HEALTH_HOST="127.0.0.2"
    )
    proc = await start_bot(env, tmp_path)
    procs.append(proc)
    await wait_ready(http, health, host="127.0.0.2")
    assert listening_addresses(health) == {"127.0.0.2"}
    assert listening_addresses(port) == {"127.0.0.1"}
    for path in (*HEALTH_PATHS, "/", f"{PATH}/x"):
        assert (await get(http, port, path))[0] == 404, path
    assert await get(http, health, "/healthz", host="127.0.0.2") == (200, "ok\n")
    assert await get(http, health, "/readyz", host="127.0.0.2") == (200, "ready\n")
    assert (await get(http, health, "/metrics", host="127.0.0.2"))[0] == 200
    # The webhook itself is served as before.
    user = tg.add_user(21, "Ann")
    tg.user_message(tg.private_chat(user), user, "still there?")
    await tg.wait_for(lambda: bool(tg.bot_messages(21)), 30)
    assert [status for _, status in tg.deliveries] == [200]
    await stop(proc)


async def test_a_taken_health_port_exits_with_one_line(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health = taken.getsockname()[1]
        env = bot_env(tg, fake_gptalk, REDIS_URL=redis_url, HEALTH_PORT=str(health))
        proc = await start_bot(env, tmp_path)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"gptalk-bot: HEALTH_PORT: cannot listen on 127.0.0.1:{health} ("), last
    assert "Traceback" not in err.decode()
