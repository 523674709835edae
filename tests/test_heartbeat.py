"""The heartbeat file (``bot/heartbeat.py``) and its check (``python -m bot.healthcheck``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.healthcheck import DEFAULT_HEARTBEAT_FILE, heartbeat_path
from bot.heartbeat import Heartbeat
from tests.bot_process import bot_env, start_bot
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- Heartbeat ------------------------------------------------------------------------------


async def test_start_writes_at_once_then_refreshes_and_stop_removes(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    heartbeat = Heartbeat(path, interval=0.05)
    before = time.time()
    await heartbeat.start()
    try:
        assert path.exists()  # at once, not after the first interval
        first = float(path.read_text())
        assert before - 1 <= first <= time.time() + 1
        await wait_until(lambda: float(path.read_text()) > first, within=5)
        os.utime(path, (0, 0))  # the check reads the mtime: it moves too
        await wait_until(lambda: path.stat().st_mtime > before - 1, within=5)
    finally:
        await heartbeat.stop()
    assert not path.exists()
    assert not heartbeat.running
    await asyncio.sleep(0.15)
    assert not path.exists(), "no write after stop"


async def test_stop_is_idempotent_and_start_twice_keeps_one_task(tmp_path: Path) -> None:
    heartbeat = Heartbeat(tmp_path / "hb", interval=0.05)
    await heartbeat.stop()  # never started: nothing to do
    await heartbeat.start()
    tasks = {t for t in asyncio.all_tasks() if t.get_name() == "heartbeat"}
    await heartbeat.start()
    assert {t for t in asyncio.all_tasks() if t.get_name() == "heartbeat"} == tasks
    await heartbeat.stop()
    await heartbeat.stop()
    assert not (tmp_path / "hb").exists()
    assert listing(tmp_path) == [], "no temporary file left behind"


async def test_an_unwritable_file_is_logged_once_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-dir" / "hb"
    heartbeat = Heartbeat(path, interval=0.02)
    with caplog.at_level(logging.INFO, logger="bot.heartbeat"):
        await heartbeat.start()
        await asyncio.sleep(0.15)  # several failed beats
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert str(path) in warnings[0].getMessage()
        path.parent.mkdir()  # fixed while running: the heartbeat resumes
        await wait_until(path.exists, within=5)
        await heartbeat.stop()
    assert any("written again" in r.getMessage() for r in caplog.records)
    assert not path.exists()


def test_interval_must_be_positive(tmp_path: Path) -> None:
    for interval in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="interval"):
            Heartbeat(tmp_path / "hb", interval=interval)


# --- python -m bot.healthcheck ----------------------------------------------------------------


def healthcheck(heartbeat_file: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HEARTBEAT_FILE"}
    if heartbeat_file is not None:
        env["HEARTBEAT_FILE"] = heartbeat_file
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot.healthcheck", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_unhealthy(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_fresh_heartbeat_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    path.write_text(f"{time.time()}\n")
    result = healthcheck(str(path))
    assert result.returncode == 0, result
    assert result.stderr == ""


def test_stale_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    path.write_text("0\n")
    old = time.time() - 1000
    os.utime(path, (old, old))
    assert_unhealthy(healthcheck(str(path)), str(path), "old")


def test_max_age_option(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    path.write_text("0\n")
    old = time.time() - 100
    os.utime(path, (old, old))
    assert_unhealthy(healthcheck(str(path)))  # default: 90 s
    assert healthcheck(str(path), "--max-age", "200").returncode == 0
    assert_unhealthy(healthcheck(str(path), "--max-age", "50"))
    assert healthcheck(str(path), "--max-age", "0").returncode == 2  # usage error
    assert healthcheck(str(path), "--max-age", "soon").returncode == 2


def test_missing_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "never-written"
    assert_unhealthy(healthcheck(str(path)), str(path))


def test_empty_heartbeat_variable_is_unhealthy() -> None:
    assert_unhealthy(healthcheck(""), "HEARTBEAT_FILE")


def test_default_path_when_the_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEARTBEAT_FILE", raising=False)
    assert heartbeat_path() == DEFAULT_HEARTBEAT_FILE == Path("/tmp/gptalk-bot.heartbeat")
    monkeypatch.setenv("HEARTBEAT_FILE", "/run/x.heartbeat")
    assert heartbeat_path() == Path("/run/x.heartbeat")


# --- the bot keeps it fresh -------------------------------------------------------------------


async def test_dispatcher_beats_while_polling(make_bot: BotFactory, tmp_path: Path) -> None:
    path = tmp_path / "hb"
    harness = await make_bot(redis_url=None, heartbeat_file=path)
    assert path.exists()
    await harness.stop()
    assert not path.exists()


async def test_no_heartbeat_unless_configured(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    harness = await make_bot(redis_url=None)
    assert harness.settings.heartbeat_file is None
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "heartbeat"]
    assert listing(tmp_path) == []


async def test_bot_process_is_healthy_until_sigterm(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    """What the container does: ``python -m bot`` with HEARTBEAT_FILE, checked from outside."""
    path = tmp_path / "gptalk-bot.heartbeat"
    env = bot_env(tg, fake_gptalk, HEARTBEAT_FILE=str(path))
    proc = await start_bot(env, tmp_path, stdout=asyncio.subprocess.DEVNULL)
    try:
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=30)
        assert path.exists()
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.healthcheck",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(check.communicate(), 30)
        assert check.returncode == 0, err
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        assert not path.exists(), "a stopped bot leaves no heartbeat behind"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
