"""deploy/nginx.conf, checked and run by Debian's nginx in front of three real replicas;
the replicas' compose healthcheck, run against a real replica."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from bot.delivery.render import render
from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.webhook_process import SECRET, free_port, get, metric, wait_ready, webhook_env

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "nginx.conf"


def nginx() -> str:
    exe = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if exe is None:
        pytest.fail("nginx is not installed (scripts/test installs Debian's nginx)", pytrace=False)
    return exe


def local_config(tmp_path: Path, listen: int, replicas: list[int]) -> Path:
    """The repository's config with only its addresses changed: the compose service names
    become local ports (nothing else may differ)."""
    text = CONFIG.read_text()
    servers = re.findall(r"server bot-\d:8080", text)
    assert len(servers) == len(replicas) == 3
    for name, port in zip(servers, replicas, strict=True):
        text = text.replace(name, f"server 127.0.0.1:{port}", 1)
    assert text.count("listen 8080;") == 1
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    text = text.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_the_config_is_valid_for_nginx(tmp_path: Path) -> None:
    config = local_config(tmp_path, free_port(), [free_port() for _ in range(3)])
    result = subprocess.run(
        [nginx(), "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def nginx_front(tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    listen, replicas = free_port(), [free_port() for _ in range(3)]
    config = local_config(tmp_path, listen, replicas)
    proc = subprocess.Popen(
        [nginx(), "-e", "stderr", "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
    )
    try:
        yield listen, replicas
    finally:
        proc.terminate()
        proc.wait(10)


async def test_three_replicas_behind_nginx_share_the_updates(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    nginx_front: tuple[int, list[int]],
    procs: list[asyncio.subprocess.Process],
) -> None:
    listen, ports = nginx_front
    health = [free_port() for _ in ports]
    public = f"http://127.0.0.1:{listen}/telegram/webhook"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for i, port in enumerate(ports, 1):
            env = bot_env(
                tg,
                fake_gptalk,
                REDIS_URL=redis_url,
                WEBHOOK_URL=public,
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_HOST="127.0.0.1",
                WEBHOOK_PORT=str(port),
                HEALTH_PORT=str(health[i - 1]),
                REPLICA_ID=f"bot-{i}",
            )
            procs.append(await start_bot(env, tmp_path))
            await wait_ready(http, health[i - 1])
        assert {c.params["url"] for c in tg.calls_to("setWebhook")} == {public}

        # Telegram delivers through nginx, one update at a time: round-robin.
        expected = render(fake_gptalk.answer).text
        questions = []
        for n in range(6):
            user = tg.add_user(100 + n, f"User{n}")
            questions.append(tg.user_message(tg.private_chat(user), user, f"question {n}"))
        for n, question in enumerate(questions):
            await tg.wait_for(
                lambda n=n, q=question: tg.visible_text(100 + n, q["message_id"]) == expected, 60
            )
        assert all(status == 200 for _, status in tg.deliveries)
        assert sorted(fake_gptalk.prompts) == [f"question {n}" for n in range(6)]
        per_replica = [
            metric((await get(http, port, "/metrics"))[1], "gptalk_bot_updates_received_total",
                   type="message")
            for port in health
        ]  # fmt: skip
        assert per_replica == [2, 2, 2]

        # Only the webhook path is public.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await get(http, listen, path))[0] == 404
        async with http.post(public, json={"update_id": 1}) as response:
            assert response.status == 401  # forwarded, and refused without the secret

        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 60)
            assert proc.returncode == 0


def replica_healthcheck(health_port: int) -> list[str]:
    """docker-compose.yml's healthcheck of the replicas, to run here: the image's python
    becomes this one and the image's HEALTH_PORT (9090) ``health_port`` (nothing else may
    differ)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, python, *argv = compose["services"]["bot-1"]["healthcheck"]["test"]
    assert (kind, python) == ("CMD", "/opt/venv/bin/python")
    assert sum(arg.count("127.0.0.1:9090/readyz") for arg in argv) == 1
    return [sys.executable] + [arg.replace(":9090/", f":{health_port}/") for arg in argv]


async def exit_status(argv: list[str]) -> int:
    # Not subprocess.run: the fake Bot API that /readyz asks runs on this event loop.
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_replicas_healthcheck_passes_when_readyz_does(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,  # flushed: the fake numbers its updates from 1
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    health = free_port()
    check = replica_healthcheck(health)
    assert await exit_status(check) == 1  # nobody listens yet
    env = webhook_env(tg, fake_gptalk, free_port(), health_port=health, REDIS_URL=redis_url)
    proc = await start_bot(env, tmp_path)
    procs.append(proc)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        await wait_ready(http, health)
    assert await exit_status(check) == 0
    fake_gptalk.hold = asyncio.Event()  # an answer keeps the replica draining a while
    user = tg.add_user(7, "Ann")
    tg.user_message(tg.private_chat(user), user, "a long one")
    await tg.wait_for(lambda: fake_gptalk.streams == 1, 30)
    proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await exit_status(check) != 1:  # /readyz: 503 while draining
        assert loop.time() < deadline, "the healthcheck still passes while draining"
    fake_gptalk.hold.set()
    assert await asyncio.wait_for(proc.wait(), 60) == 0
