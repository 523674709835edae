"""Security end to end: who may run admin commands, secrets in logs, and key namespaces.

* ``/reset_token`` runs only for a listed admin writing as themselves: not forwarded, not
  on behalf of a chat, not a non-admin who happens to share a group with an admin.
* A whole session of the real ``python -m bot`` at ``LOG_LEVEL=DEBUG`` — answers, GPTalk
  failures whose URLs carry a stream token, admin commands, Telegram errors — never prints
  the bot token or a GPTalk token; nor the passwords in the URLs it is configured with.
* Two bots with different ``REDIS_PREFIX`` share one Redis without touching each other.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from tests.bot_harness import BotHarness
from tests.bot_process import bot_env, start_bot
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.test_cli import closed_port_url

ADMIN = 42
BOT = "@gptalk_test_bot"
ANONYMOUS_ADMIN_BOT = 1087968824  # Telegram's @GroupAnonymousBot
CHANNEL_BOT = 136817688  # Telegram's @Channel_Bot, the sender of channel messages

Json = dict[str, Any]


# --- /reset_token: only an admin, as themselves --------------------------------------------------


async def test_reset_token_needs_an_admin_writing_as_themselves(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot(admin_ids=frozenset({ADMIN}))
    root, eve = harness.user(ADMIN, "Root"), harness.user(7, "Eve")
    harness.say(root, "hello")  # a shared token now exists
    await harness.settle()
    auth = await redis.hgetall("gptalk:auth")
    assert auth[b"token"] == fake_gptalk.issued_tokens()[0].encode()

    group = tg.group_chat(-100, "Team")
    channel = {"id": -100555, "type": "channel", "title": "News"}
    anonymous = tg.add_user(ANONYMOUS_ADMIN_BOT, "Group", username="GroupAnonymousBot", is_bot=True)
    channel_bot = tg.add_user(CHANNEL_BOT, "Channel", username="Channel_Bot", is_bot=True)
    forwarded = {"type": "user", "date": int(time.time()) - 60, "sender_user": root}
    harness.say(root, "morning, all", chat=group)  # the admin is in the group
    attempts: list[tuple[str, Json, Json]] = [
        ("forwarded from the admin", root, {"forward_origin": forwarded}),
        ("forwarded, in a group", root, {"chat": group, "forward_origin": forwarded}),
        ("admin's id, sent as the group", root, {"chat": group, "sender_chat": group}),
        ("anonymous group admin", anonymous, {"chat": group, "sender_chat": group}),
        ("a linked channel", channel_bot, {"chat": group, "sender_chat": channel}),
        ("non-admin next to an admin", eve, {"chat": group}),
        ("non-admin, addressed", eve, {"chat": group, "text": "/reset_token@gptalk_test_bot"}),
    ]
    for case, user, kwargs in attempts:
        text = kwargs.pop("text", "/reset_token")
        harness.say(user, text, **kwargs)
        await harness.settle()
        assert await redis.hgetall("gptalk:auth") == auth, case
    assert not any("reset" in m.text.lower() for m in tg.bot_messages(group["id"]))
    assert not any("reset" in m.text.lower() for m in tg.bot_messages(ADMIN))

    harness.say(root, "/reset_token")  # the control: the real thing works
    await harness.settle()
    assert await redis.exists("gptalk:auth") == 0


# --- secrets never in logs -----------------------------------------------------------------------


@pytest.fixture
async def secret_tg() -> AsyncIterator[FakeTelegram]:
    """A fake Bot API with a realistic, random bot token."""
    token = f"{7_000_000_000 + secrets.randbelow(10**9)}:AA{secrets.token_urlsafe(33)}"
    async with FakeTelegram(token=token, bot_id=int(token.split(":")[0])) as fake:
        yield fake


async def test_a_debug_session_of_python_m_bot_never_logs_a_secret(
    secret_tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    tg = secret_tg
    fake_gptalk.answer = "A **streamed** answer: " + "word " * 40
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.03
    env = bot_env(
        tg,
        fake_gptalk,
        GPTALK_READ_TIMEOUT="1",
        REDIS_URL=redis_url,
        ADMIN_IDS=str(ADMIN),
        LOG_LEVEL="DEBUG",
    )
    proc = await start_bot(env, tmp_path)
    try:
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=60)
        root = tg.add_user(ADMIN, "Root")
        chat = tg.private_chat(root)

        async def ask(text: str, done: str | None = None) -> str:
            """Send a prompt; wait for the final answer (``done`` in it, or the full one)."""
            question = tg.user_message(chat, root, text)
            expected = render(fake_gptalk.answer).text

            def finished() -> bool:
                shown = tg.visible_text(ADMIN, question["message_id"])
                return done in shown if done is not None else shown == expected

            await tg.wait_for(finished, timeout=30)
            return tg.visible_text(ADMIN, question["message_id"])

        async def command(text: str) -> str:
            before = len(tg.bot_messages(ADMIN))
            tg.user_message(chat, root, text)
            await tg.wait_for(lambda: len(tg.bot_messages(ADMIN)) > before, timeout=30)
            return tg.bot_messages(ADMIN)[-1].text

        # Telegram failures: a long poll and an edit of a streaming answer.
        tg.fail_next("getUpdates", error_code=502, description="Bad Gateway")
        tg.fail_next("editMessageText", error_code=500, description="Internal Server Error")
        await ask("hello, stream")
        # GPTalk failures: the submit, the stream (its URL carries the stream token), a
        # stalled stream (GPTALK_READ_TIMEOUT), a failing login.
        fake_gptalk.fail("submit", status=500)
        await ask("fail the submit", "⚠️")
        fake_gptalk.fail("stream", status=500)
        await ask("fail the stream", "⚠️")
        fake_gptalk.fail("stream", stall=3.0, after=1)
        await ask("stall the stream", "⚠️")
        assert "uses left" in (await command("/token")).lower()
        assert "requests" in (await command("/stats")).lower()
        assert "reset" in (await command("/reset_token")).lower()
        fake_gptalk.fail("login", status=500)
        await ask("fail the login", "⚠️")
        await ask("and once more")
        assert fake_gptalk.logins == 2
        assert len(fake_gptalk.issued_stream_tokens()) == 4  # the failed submit and login: none
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]

    log = (out + err).decode()
    assert " DEBUG " in log  # the session really logged at DEBUG
    assert log.lower().count("gptalk failed") >= 4  # ... and logged the failures
    secret_part = tg.token.split(":", 1)[1]
    assert tg.token not in log
    assert secret_part not in log
    issued = fake_gptalk.issued_tokens() + fake_gptalk.issued_stream_tokens()
    leaked = [token for token in issued if token in log]
    assert leaked == [], [line for line in log.splitlines() if any(t in line for t in leaked)]
    # Nothing secret reached the users either.
    sent = json.dumps([c.params for c in tg.calls], ensure_ascii=False)
    assert not [token for token in issued if token in sent]


# --- credentials in configured URLs -------------------------------------------------------------


async def test_credentials_in_urls_never_reach_the_log(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, refusing_proxy: str, tmp_path: Path
) -> None:
    """A DEBUG session of ``python -m bot`` whose three configurable URLs carry a user
    and password: GPTALK_PROXY refuses (aiohttp's error quotes the proxy's URL whole),
    OPENAI_BASE_URL, the fallback, is unreachable (the provider's error names it), and
    TELEGRAM_API_URL works. The log names each URL by its host, never with the password."""
    openai_url = closed_port_url("http") + "/v1"
    env = bot_env(
        tg,
        fake_gptalk,
        TELEGRAM_API_URL=tg.url.replace("http://", "http://tguser:TG_PW@"),
        GPTALK_URL="https://gptalk.invalid",  # reached through the proxy: no DNS lookup here
        GPTALK_PROXY=f"http://puser:PROXY_PW@{refusing_proxy}",
        LLM_PROVIDERS="gptalk,openai",
        OPENAI_MODEL="test-model",
        OPENAI_BASE_URL=openai_url.replace("http://", "http://gwuser:BASEURL_PW@"),
        LOG_LEVEL="DEBUG",
    )
    proc = await start_bot(env, tmp_path)
    try:
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=60)
        user = tg.add_user(ADMIN, "Root")
        question = tg.user_message(tg.private_chat(user), user, "hello")
        await tg.wait_for(lambda: "⚠️" in tg.visible_text(ADMIN, question["message_id"]), 30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]

    log = (out + err).decode()
    sent = json.dumps([c.params for c in tg.calls], ensure_ascii=False)
    for secret in ("TG_PW", "PROXY_PW", "BASEURL_PW", "tguser", "puser", "gwuser"):
        assert secret not in log, [line for line in log.splitlines() if secret in line]
        assert secret not in sent
    # Both failures were logged, naming the URL without its userinfo.
    assert f"Proxy Authentication Required', url='http://{refusing_proxy}'" in log
    assert f"openai failed: {openai_url} (test-model): connection failed" in log


# --- two bots, one Redis -----------------------------------------------------------------------


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def history(redis: aioredis.Redis, prefix: str) -> str:
    """User 1001's stored conversation under ``prefix``, as one string."""
    return "\n".join(text(item) for item in await redis.lrange(f"{prefix}:history:1001", 0, -1))


async def test_two_prefixes_on_one_redis_do_not_touch_each_other(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis, redis_url: str
) -> None:
    fake_gptalk.reply = lambda prompt: f"seen {prompt.count('User:') or 1} turn(s)"
    async with FakeTelegram(bot_id=654321, bot_username="other_test_bot") as tg2:
        first = BotHarness(tg, fake_gptalk, redis_url=redis_url)
        second = BotHarness(tg2, fake_gptalk, redis_url=redis_url, redis_prefix="other")
        try:
            await first.start()
            await second.start()

            async def prompt(harness: BotHarness, text: str) -> str:
                """The same user (same chat id!) writes to one of the bots."""
                harness.say(harness.user(1001, "Ann"), text)
                await harness.settle()
                return fake_gptalk.prompts[-1]

            await prompt(first, "apple")
            await prompt(second, "banana")
            keys = sorted(text(k) for k in await redis.keys("*"))
            assert keys
            assert [k for k in keys if not k.startswith(("gptalk:", "other:"))] == []
            assert {"gptalk:history:1001", "other:history:1001"} <= set(keys)
            assert {"gptalk:auth", "other:auth"} <= set(keys)
            first_history = await history(redis, "gptalk")
            second_history = await history(redis, "other")
            assert "apple" in first_history
            assert "banana" not in first_history
            assert "banana" in second_history
            assert "apple" not in second_history

            first.say(first.user(1001, "Ann"), "/new")
            await first.settle()
            assert await redis.exists("gptalk:history:1001") == 0
            assert await history(redis, "other") == second_history

            assert "banana" in await prompt(second, "cherry")  # its memory is intact
            assert "apple" not in await prompt(first, "date")  # this one starts afresh
            assert fake_gptalk.logins == 2  # one shared token per prefix
        finally:
            await first.stop()
            await second.stop()
