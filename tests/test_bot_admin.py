"""Admin commands end to end: /token, /reset_token, /stats, refusals and command menus."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.delivery.render import render
from bot.dispatcher import set_commands
from bot.i18n import EN, RU
from bot.storage.keys import Keys
from bot.storage.stats import RedisStats
from tests.bot_harness import BotHarness
from tests.bot_process import bot_env, start_bot
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

ADMIN = 1
ADMINS = frozenset({ADMIN})
ADMIN_COMMANDS = {"token", "reset_token", "stats"}
ANONYMOUS_ADMIN_BOT = 1087968824  # Telegram's @GroupAnonymousBot


async def command(
    harness: BotHarness,
    user: dict[str, Any],
    text: str,
    *,
    chat: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[str]:
    """``user`` sends ``text``; returns the texts of the bot's new messages in that chat."""
    chat = chat or harness.tg.private_chat(user)
    before = len(harness.tg.bot_messages(chat["id"]))
    harness.say(user, text, chat=chat, **kwargs)
    await harness.settle()
    return [m.text for m in harness.tg.bot_messages(chat["id"])[before:]]


async def prompt(harness: BotHarness, user: dict[str, Any], text: str = "hello") -> None:
    harness.say(user, text)
    await harness.settle()


def parse_stats(text: str) -> dict[str, int]:
    patterns = {
        "requests": r"requests\D*(\d+)",
        "failures": r"failures\D*(\d+)",
        "logins": r"logins\D*(\d+)",
        "429s": r"429s?\D*(\d+)",
        "active": r"(?:streaming|active)\D*(\d+)",
    }
    numbers: dict[str, int] = {}
    for name, pattern in patterns.items():
        found = re.search(pattern, text, re.IGNORECASE)
        assert found is not None, f"no {name} in {text!r}"
        numbers[name] = int(found.group(1))
    return numbers


async def stats_of(harness: BotHarness, admin: dict[str, Any]) -> dict[str, int]:
    [text] = await command(harness, admin, "/stats")
    return parse_stats(text)


def assert_no_token_leaked(tg: FakeTelegram, gptalk: FakeGPTalk) -> None:
    """No GPTalk token in anything the bot sent to Telegram (texts, edits, anything)."""
    sent = json.dumps([call.params for call in tg.calls], ensure_ascii=False)
    secrets = gptalk.issued_tokens() + gptalk.issued_stream_tokens()
    for secret in secrets:
        assert secret not in sent


async def redis_state(redis: aioredis.Redis) -> dict[Any, Any]:
    """Every key and its value (not its TTL), but the Telegram budgets, which every
    reply the bot sends spends (refusals too)."""
    state: dict[Any, Any] = {}
    for key in sorted(await redis.keys("*")):
        if key.startswith(b"gptalk:telegram:"):
            continue
        kind = await redis.type(key)
        if kind == b"hash":
            state[key] = await redis.hgetall(key)
        elif kind == b"string":
            state[key] = await redis.get(key)
        elif kind == b"list":
            state[key] = await redis.lrange(key, 0, -1)
        elif kind == b"zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = kind
    return state


def text_of(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


# --- /token and /reset_token -----------------------------------------------------------------


async def test_token_shows_its_state_but_never_the_token(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot(admin_ids=ADMINS)
    root, bob = harness.user(ADMIN, "Root"), harness.user(2, "Bob")
    [before] = await command(harness, root, "/token")
    assert "no gptalk token" in before.lower()

    await prompt(harness, bob, "one")
    await prompt(harness, bob, "two")
    [text] = await command(harness, root, "/token")
    raw = await redis.hgetall("gptalk:auth")
    auth = {text_of(k): text_of(v) for k, v in raw.items()}
    assert utc(float(auth["obtained_at"])) in text
    assert utc(int(auth["expires_at"])) in text
    found = re.search(r"(\d+) of (\d+)", text)
    assert found is not None
    assert (int(found.group(1)), int(found.group(2))) == (3, 5)
    assert fake_gptalk.issued_tokens() == [auth["token"]]
    assert auth["token"] not in text
    assert_no_token_leaked(tg, fake_gptalk)


async def test_reset_token_forces_exactly_one_new_login(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot(admin_ids=ADMINS)
    root, bob = harness.user(ADMIN, "Root"), harness.user(2, "Bob")
    await prompt(harness, bob, "one")
    await prompt(harness, bob, "two")
    [old] = fake_gptalk.issued_tokens()
    assert fake_gptalk.logins == 1
    assert fake_gptalk.token_uses[old] == 2  # 3 uses left

    [confirmation] = await command(harness, root, "/reset_token")
    assert "reset" in confirmation.lower()
    assert await redis.exists("gptalk:auth") == 0

    await prompt(harness, bob, "three")
    assert fake_gptalk.logins == 2
    assert fake_gptalk.token_uses[old] == 2  # the old token was not used again
    [text] = await command(harness, root, "/token")
    assert "4 of 5" in text
    assert_no_token_leaked(tg, fake_gptalk)


# --- /stats ------------------------------------------------------------------------------------


async def test_stats_are_shared_by_all_processes(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    worker = await make_bot()  # process 1 answers; process 2 (own Telegram) reports
    async with FakeTelegram() as tg2:
        console = BotHarness(tg2, fake_gptalk, redis_url=redis_url, admin_ids=ADMINS)
        await console.start()
        try:
            root = console.user(ADMIN, "Root")
            assert await stats_of(console, root) == {
                "requests": 0,
                "failures": 0,
                "logins": 0,
                "429s": 0,
                "active": 0,
            }
            ann = worker.user(2, "Ann")
            await prompt(worker, ann, "fine")
            fake_gptalk.fail("submit", status=500)
            await prompt(worker, ann, "broken")
            tg.fail_next(
                "sendMessage",
                error_code=429,
                description="Too Many Requests: retry after 1",
                retry_after=1,
            )
            await prompt(worker, ann, "throttled")
            assert tg.injected_errors == 1
            expected = {"requests": 3, "failures": 1, "logins": 1, "429s": 1, "active": 0}
            assert await stats_of(console, root) == expected
            assert await RedisStats(redis, Keys("gptalk")).snapshot() == expected

            # A running answer counts as active while it streams, in every process's view.
            fake_gptalk.answer = "slowly " * 40
            fake_gptalk.chunk_size, fake_gptalk.delay = 14, 0.15  # ~3 s
            bob = worker.user(3, "Bob")
            question = worker.say(bob, "take your time")
            await tg.wait_for(lambda: bool(tg.bot_messages(bob["id"])), timeout=10)
            streaming = await stats_of(console, root)
            final = render(fake_gptalk.answer).text
            assert tg.visible_text(bob["id"], question["message_id"]) != final  # still going
            assert streaming["active"] == 1
            assert streaming["requests"] == 4
            await worker.settle()
            assert (await stats_of(console, root))["active"] == 0
        finally:
            await console.stop()


# --- refusals ----------------------------------------------------------------------------------


async def test_non_admins_get_a_refusal_and_nothing_changes(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot(admin_ids=ADMINS)
    root, eve = harness.user(ADMIN, "Root"), harness.user(2, "Eve")
    await prompt(harness, root, "hello")  # a token and some statistics exist
    auth_before = await redis.hgetall("gptalk:auth")
    stats_before = await redis.hgetall("gptalk:stats")
    assert auth_before
    assert stats_before
    state_before = await redis_state(redis)

    group = tg.group_chat(-100, "Team")
    anonymous = tg.add_user(ANONYMOUS_ADMIN_BOT, "Group", username="GroupAnonymousBot", is_bot=True)
    forwarded = {"type": "user", "date": int(time.time()) - 60, "sender_user": root}
    hidden = {"type": "hidden_user", "date": int(time.time()) - 60, "sender_user_name": "Root"}
    harness.say(root, "good morning, team", chat=group)  # an admin is in the group
    attempts: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
        (eve, "/reset_token", {}),
        (eve, "/token", {}),
        (eve, "/stats", {}),
        (eve, "/reset_token", {"chat": group}),
        (eve, "/token@gptalk_test_bot", {"chat": group}),
        (anonymous, "/reset_token", {"chat": group, "sender_chat": group}),
        (anonymous, "/stats", {"chat": group, "sender_chat": group}),
        (root, "/reset_token", {"chat": group, "sender_chat": group}),  # on behalf of a chat
        (root, "/reset_token", {"forward_origin": forwarded}),
        (root, "/token", {"forward_origin": hidden}),
    ]
    for user, text, kwargs in attempts:
        replies = await command(harness, user, text, **kwargs)
        assert len(replies) == 1, (user["id"], text, kwargs, replies)
        assert "admin" in replies[0].lower()
        assert len(replies[0]) < 100
        assert not re.search(r"\d+ of \d+|requests|reset:", replies[0], re.IGNORECASE)

    assert await redis.hgetall("gptalk:auth") == auth_before
    assert await redis.hgetall("gptalk:stats") == stats_before
    assert await redis_state(redis) == state_before
    assert fake_gptalk.logins == 1
    await prompt(harness, root, "still the same token?")
    assert fake_gptalk.logins == 1
    assert_no_token_leaked(tg, fake_gptalk)


async def test_admin_commands_in_a_group_only_point_to_the_private_chat(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    """Everyone in a group would read the answer: there even an admin gets one line, the
    same as anyone's, and nothing runs."""
    harness = await make_bot(admin_ids=frozenset({ADMIN, 3}))
    root, eve = harness.user(ADMIN, "Root"), harness.user(2, "Eve")
    ivan = tg.add_user(3, "Ivan", language_code="ru")  # an admin too
    await prompt(harness, root, "hello")  # a token and some statistics exist
    state_before = await redis_state(redis)

    group = tg.group_chat(-100, "Team")
    tg.set_member(group, root, "creator")  # even the group's own creator
    attempts: list[tuple[dict[str, Any], str, str]] = [
        (root, "/token", EN.admin_private_only),
        (root, "/stats", EN.admin_private_only),
        (root, "/reset_token", EN.admin_private_only),
        (root, "/reset_token@gptalk_test_bot", EN.admin_private_only),
        (ivan, "/stats", RU.admin_private_only),
        (eve, "/token", EN.admin_private_only),
    ]
    for user, text, expected in attempts:
        assert await command(harness, user, text, chat=group) == [expected], (user["id"], text)
    assert await redis_state(redis) == state_before  # the token was not reset
    assert fake_gptalk.logins == 1
    assert tg.calls_to("getChatMember") == []
    assert_no_token_leaked(tg, fake_gptalk)

    # In private the same admins get their answers.
    [token] = await command(harness, root, "/token")
    assert "4 of 5" in token
    [stats] = await command(harness, ivan, "/stats")
    assert stats.startswith("📊 Статистика")


# --- command menus -----------------------------------------------------------------------------


def menus(tg: FakeTelegram) -> dict[str, list[str]]:
    return {scope: [c["command"] for c in cmds] for scope, cmds in tg.commands.items()}


def assert_menus(tg: FakeTelegram, admin_with_chat: int, admin_without_chat: int) -> None:
    names = menus(tg)
    private = names["all_private_chats"]
    assert {"new", "stop", "retry", "help"} <= set(private)
    assert "ask" in names["all_group_chats"]
    admin = names[f"chat:{admin_with_chat}"]
    assert sorted(admin) == sorted([*private, *ADMIN_COMMANDS])
    assert f"chat:{admin_without_chat}" not in names
    for scope, commands in names.items():
        if scope.partition("/")[0] != f"chat:{admin_with_chat}":  # any language's menu
            assert not ADMIN_COMMANDS & set(commands), scope
    failed = [c.description for c in tg.calls_to("setMyCommands") if not c.ok]
    assert failed == ["Bad Request: chat not found"]


async def test_admin_commands_are_only_in_admins_menus(
    make_bot: BotFactory, tg: FakeTelegram
) -> None:
    harness = await make_bot(admin_ids=frozenset({5, 7}))
    assert harness.app is not None
    tg.private_chat(tg.add_user(7, "Root"))  # admin 5 never opened a chat with the bot
    tg.private_chat(tg.add_user(9, "Eve"))
    tg.group_chat(-100, "Team")
    await set_commands(harness.app.bot, frozenset({5, 7}))
    assert_menus(tg, admin_with_chat=7, admin_without_chat=5)


async def test_python_m_bot_registers_the_menus_at_startup(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    tg.private_chat(tg.add_user(7, "Root"))  # admin 3 never opened a chat with the bot
    proc = await start_bot(bot_env(tg, fake_gptalk, ADMIN_IDS="3, 7"), tmp_path)
    try:
        await tg.wait_for(lambda: tg.long_poll_pending, timeout=30)
        assert_menus(tg, admin_with_chat=7, admin_without_chat=3)
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_stats_show_this_process_event_loop_lag(make_bot: BotFactory) -> None:
    harness = await make_bot(admin_ids=ADMINS)
    root = harness.user(ADMIN, "Root")
    await asyncio.sleep(0.3)  # the probe ticks every 0.1 s
    time.sleep(0.4)  # noqa: ASYNC251 — the bot's loop is held: every timer of the process fires late
    await asyncio.sleep(0.2)
    [text] = await command(harness, root, "/stats")
    found = re.search(r"lag.*p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms", text)
    assert found is not None, text
    p50, p99, most = (int(v) for v in found.groups())
    assert most >= 300
    assert p50 < 300
    assert p50 <= p99 <= most
    assert parse_stats(text)["active"] == 0  # the other counters read as before
