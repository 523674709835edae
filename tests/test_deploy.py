"""deploy/nginx.conf, checked and run by Debian's nginx in front of three real replicas."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.webhook_process import SECRET, free_port, get, metric, wait_ready

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
                REPLICA_ID=f"bot-{i}",
            )
            procs.append(await start_bot(env, tmp_path))
            await wait_ready(http, port)
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
            for port in ports
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
