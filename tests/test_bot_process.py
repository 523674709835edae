"""``python -m bot`` as a real process against the fake servers."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path  # no stray .env from the repository


async def test_bot_answers_and_shuts_down_gracefully(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    workdir: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    fake_gptalk.answer = "A **slow** answer, " + "word " * 60
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~4 s
    env = bot_env(tg, fake_gptalk, REDIS_URL=redis_url, SHUTDOWN_TIMEOUT="30", LOG_LEVEL="DEBUG")
    proc = await start_bot(env, workdir)
    procs.append(proc)
    await tg.wait_for(lambda: tg.long_poll_pending, timeout=30)
    assert tg.calls_to("deleteWebhook")
    menus = {c.params["scope"]["type"]: c.params["commands"] for c in tg.calls_to("setMyCommands")}
    assert [c["command"] for c in menus["all_private_chats"]] == ["new", "stop", "retry", "help"]
    group_menu = [c["command"] for c in menus["all_group_chats"]]
    assert group_menu == ["ask", "new", "stop", "retry", "help"]

    user = tg.add_user(42, "Ann")
    question = tg.user_message(tg.private_chat(user), user, "hello bot")
    await tg.wait_for(lambda: bool(tg.bot_messages(42)), timeout=30)
    queued = tg.user_message(tg.private_chat(user), user, "and another thing")
    await tg.wait_for(lambda: not tg.pending_updates, timeout=30)  # the bot has it
    # ... and it waits in line (in Redis), not still on its way there: the shutdown's
    # hand-back takes the prompts in line.
    async with asyncio.timeout(30):
        while not await redis.zcard("gptalk:line:42:waiting"):  # noqa: ASYNC110 - Redis has no event
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # mid-answer: it must still finish
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert tg.visible_text(42, question["message_id"]) == render(fake_gptalk.answer).text
    # The prompt still waiting in line is not started during shutdown: it is handed back,
    # for whichever process comes next (tests/test_handback.py).
    assert [m for m in tg.bot_messages(42) if m.reply_to == queued["message_id"]] == []
    assert fake_gptalk.prompts == ["hello bot"]
    [handed] = await redis.lrange("gptalk:handback", 0, -1)
    assert json.loads(handed)["turn"] == "and another thing"
    await redis.delete("gptalk:handback")
    log = err.decode()
    assert "handed back 1 waiting prompt(s)" in log
    assert tg.token not in log
    assert tg.token.split(":")[1] not in log
    for token in fake_gptalk.issued_tokens() + fake_gptalk.issued_stream_tokens():
        assert token not in log
    assert "hello bot" not in log.replace("DEBUG", "") or "DEBUG" in log  # prompts: DEBUG only


@pytest.mark.parametrize(
    ("variable", "value"),
    [("EDIT_INTERVAL", "soon"), ("ADMIN_IDS", "1,x"), ("GPTALK_MAX_USES", "0"), ("BOT_TOKEN", "")],
)
async def test_invalid_configuration_exits_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path, variable: str, value: str
) -> None:
    proc = await start_bot(bot_env(tg, fake_gptalk, **{variable: value}), workdir)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
    assert "Traceback" not in err.decode()


async def test_unreachable_redis_exits_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path
) -> None:
    env = bot_env(tg, fake_gptalk, REDIS_URL="redis://127.0.0.1:1/0")
    proc = await start_bot(env, workdir)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("gptalk-bot: REDIS_URL: cannot reach Redis")
    assert "Traceback" not in err.decode()


async def test_rejected_token_exits_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, workdir: Path
) -> None:
    env = bot_env(tg, fake_gptalk, BOT_TOKEN="999:wrong-token")
    proc = await start_bot(env, workdir)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = err.decode()
    assert text.strip().splitlines()[-1] == "gptalk-bot: BOT_TOKEN: Telegram rejected the token"
    assert "wrong-token" not in text


async def test_without_redis_it_warns_and_works(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    workdir: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    proc = await start_bot(bot_env(tg, fake_gptalk), workdir)
    procs.append(proc)
    await tg.wait_for(lambda: tg.long_poll_pending, timeout=30)
    user = tg.add_user(7, "Bob")
    question = tg.user_message(tg.private_chat(user), user, "hi")
    expected = render(fake_gptalk.answer).text
    await tg.wait_for(lambda: tg.visible_text(7, question["message_id"]) == expected, timeout=30)
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    log = err.decode()
    assert "REDIS_URL is not set" in log
    assert "Beneath a pale October moon" not in log  # answers are not logged at INFO
    assert "hi" not in log.split()
