"""Running ``python -m bot`` as a real process against the fake servers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import IO

from bot.config import Settings
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

__all__ = ["bot_env", "start_bot"]

ROOT = Path(__file__).resolve().parent.parent
# Every variable the bot reads: none may leak in from the environment running the tests.
CONFIG_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def bot_env(tg: FakeTelegram, gptalk: FakeGPTalk, **settings: str) -> dict[str, str]:
    """The environment of a bot pointed at the fakes, plus ``settings`` (by variable name)."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(
        BOT_TOKEN=tg.token,
        TELEGRAM_API_URL=tg.url,
        GPTALK_URL=gptalk.url,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(settings)
    return env


async def start_bot(
    env: dict[str, str],
    cwd: Path,
    *,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int | IO[bytes] = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """``python -m bot`` in ``cwd`` (a directory without a stray ``.env``). A process
    that runs for long logs to a file (``stderr``): a pipe nobody reads fills up and
    blocks it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot",
        cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout, stderr=stderr,
    )  # fmt: skip
