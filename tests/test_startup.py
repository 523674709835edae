"""Startup as an operator meets it: every unusable setting is one line on stderr,
with no traceback and never the bot token — from ``python -m bot`` and from the
installed console scripts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.bot_process import CONFIG_VARIABLES, bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

BIN = Path(sys.executable).parent  # the venv's bin: where the console scripts go


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path  # no stray .env from the repository


async def run_bot(env: dict[str, str], cwd: Path) -> tuple[int, list[str], str]:
    """Exit code, stderr's lines, stderr's text of a bot expected to stop at startup."""
    proc = await start_bot(env, cwd)
    _out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    text = err.decode()
    return proc.returncode, text.strip().splitlines(), text


def assert_no_token(text: str, token: str) -> None:
    assert token not in text
    assert token.partition(":")[2] not in text  # nor its secret half alone


async def serve(handler: web.Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def redirect_loop() -> AsyncIterator[str]:
    """A server that redirects every request to itself: aiohttp's TooManyRedirects
    quotes the request URL, which holds the token."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.path)

    async for url in serve(handler):
        yield url


@pytest.fixture
async def web_page() -> AsyncIterator[str]:
    """Not a Bot API at all: an ordinary web server answering HTML."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>It works! " + request.path + "</html>", status=404)

    async for url in serve(handler):
        yield url


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "redirect loop", "web page"])
async def test_unusable_bot_api_is_one_line_naming_the_variable_without_the_token(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    redirect_loop: str,
    web_page: str,
    workdir: Path,
    url: str,
) -> None:
    url = {"redirect loop": redirect_loop, "web page": web_page}.get(url, url)
    env = bot_env(tg, fake_gptalk, TELEGRAM_API_URL=url, REDIS_URL=redis_url)
    code, lines, text = await run_bot(env, workdir)
    assert code == 1, text
    assert len(lines) == 1, text
    assert lines[0].startswith("gptalk-bot: TELEGRAM_API_URL: "), text
    assert "Traceback" not in text
    assert_no_token(text, tg.token)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TELEGRAM_API_URL", "http://[::1"),
        ("TELEGRAM_API_URL", "http://127.0.0.1:99999"),
        ("TELEGRAM_API_URL", "http://:8081"),
        ("TELEGRAM_API_URL", "not a url"),
        ("REDIS_URL", "redis://localhost:99999"),
        ("REDIS_URL", "redis://[::1"),
        ("REDIS_URL", "redis://:s3cret-pass"),  # forgot "@host": the port is the password
        ("REDIS_URL", "foo://x"),
        ("REDIS_URL", "redis+sentinel://:s3cret-pass"),  # the same, behind Sentinel
        ("GPTALK_URL", "http://[::1"),
    ],
)
async def test_malformed_url_is_a_configuration_error(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path, variable: str, value: str
) -> None:
    code, lines, text = await run_bot(bot_env(tg, fake_gptalk, **{variable: value}), workdir)
    assert code == 2, text
    assert len(lines) == 1, text
    assert lines[0].startswith(f"gptalk-bot: configuration error: {variable}: "), text
    assert "Traceback" not in text
    assert "s3cret-pass" not in text
    assert_no_token(text, tg.token)


@pytest.mark.parametrize("value", [None, "", "  "])
async def test_missing_bot_token_says_where_to_get_one(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path, value: str | None
) -> None:
    env = bot_env(tg, fake_gptalk)
    if value is None:
        del env["BOT_TOKEN"]
    else:
        env["BOT_TOKEN"] = value
    code, lines, text = await run_bot(env, workdir)
    assert code == 2, text
    assert len(lines) == 1, text
    assert lines[0].startswith("gptalk-bot: configuration error: BOT_TOKEN: ")
    assert "@BotFather" in lines[0]
    assert ".env.example" in lines[0]


# --- what a started bot says about its configuration ---------------------------------------------


async def log_of_a_start(env: dict[str, str], cwd: Path, tg: FakeTelegram) -> str:
    """stderr of a bot run until it polls, then stopped."""
    proc = await start_bot(env, cwd)
    try:
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


def warnings_about(log: str, name: str) -> list[str]:
    return [line.partition(" bot: ")[2] for line in log.splitlines() if f" bot: {name} (" in line]


async def test_a_misspelt_access_variable_is_named_and_the_bot_says_it_is_open(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path
) -> None:
    env = bot_env(tg, fake_gptalk, ALLOWED_USERS="4242424242", ADMIN_IDS="7")
    env.update(PATH=os.environ["PATH"], HOME=str(workdir), LANG="C.UTF-8")

    log = await log_of_a_start(env, workdir, tg)

    assert warnings_about(log, "ALLOWED_USERS") == [
        "ALLOWED_USERS (in the environment) is not a setting of this bot and is ignored: "
        "did you mean ALLOWED_USER_IDS?"
    ]
    assert "4242424242" not in log  # a value may be a secret
    assert "access: open to everyone (ALLOWED_USER_IDS is empty); 1 admin (ADMIN_IDS)" in log
    for common in ("PATH", "HOME", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED"):
        assert warnings_about(log, common) == []


async def test_unknown_variables_in_dotenv_are_named_once_and_the_allowed_users_counted(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path
) -> None:
    (workdir / ".env").write_text(
        "GPTALK_PROXI=http://u:DOTENV_PW@127.0.0.1:1\nallowed_users=4242424242\n"
        "# ALLOWED_USERZ=commented out\n",
        encoding="utf-8",
    )
    env = bot_env(
        tg, fake_gptalk, ALLOWED_USERS="5353535353", ALLOWED_USER_IDS="1,2,3", ADMIN_IDS="9"
    )

    log = await log_of_a_start(env, workdir, tg)

    assert warnings_about(log, "GPTALK_PROXI") == [
        "GPTALK_PROXI (in .env) is not a setting of this bot and is ignored: "
        "did you mean GPTALK_PROXY?"
    ]
    assert warnings_about(log, "ALLOWED_USERS") == [
        "ALLOWED_USERS (in the environment and in .env) is not a setting of this bot and is "
        "ignored: did you mean ALLOWED_USER_IDS?"
    ]
    assert warnings_about(log, "ALLOWED_USERZ") == []
    for value in ("DOTENV_PW", "4242424242", "5353535353"):
        assert value not in log
    assert "access: only 3 allowed users (ALLOWED_USER_IDS) and 1 admin (ADMIN_IDS) may chat" in log


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}


def test_gptalk_bot_console_script(tmp_path: Path) -> None:
    script = BIN / "gptalk-bot"
    assert script.is_file(), "pip install -e . puts the console script in the venv"
    done = subprocess.run(
        [str(script)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gptalk-bot: configuration error: BOT_TOKEN: ")
    assert "@BotFather" in line


def test_gptalk_console_script(tmp_path: Path) -> None:
    script = BIN / "gptalk"
    assert script.is_file(), "pip install -e . puts the console script in the venv"
    done = subprocess.run(
        [str(script), "--help"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "--url" in done.stdout
    assert done.stderr == ""
