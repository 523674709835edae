"""Webhook mode, health, metrics and logs: ``python -m bot`` as real processes against
the fake Bot API (which POSTs updates like Telegram) and the fake GPTalk."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
from pathlib import Path

import aiohttp
import pytest

from bot.delivery.render import render
from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.redis_server import start_redis, stop_process
from tests.webhook_process import (
    PATH,
    SECRET,
    free_port,
    get,
    launch,
    metric,
    webhook_env,
)

# Redis flushed for each test: every fake Bot API numbers its updates from 1, and claims
# last 24 h.
pytestmark = pytest.mark.usefixtures("redis")


async def test_webhook_answers_with_health_metrics_and_json_logs(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    port, health = free_port(), free_port()
    env = webhook_env(
        tg,
        fake_gptalk,
        port,
        health_port=health,
        REDIS_URL=redis_url,
        LOG_FORMAT="json",
        REPLICA_ID="replica-a",
    )
    proc = await launch(procs, http, env, tmp_path)

    # Registered with the secret and the dispatcher's update types; polling is off.
    [registered] = tg.calls_to("setWebhook")
    assert registered.params["url"] == f"http://127.0.0.1:{port}{PATH}"
    assert registered.params["secret_token"] == SECRET
    allowed = registered.params["allowed_updates"]
    assert "message" in allowed
    assert not registered.params.get("drop_pending_updates")
    assert not tg.calls_to("deleteWebhook")
    assert not tg.calls_to("getUpdates")
    assert await get(http, health, "/healthz") == (200, "ok\n")

    user = tg.add_user(987654321, "Ann")
    question = tg.user_message(tg.private_chat(user), user, "hello over a webhook")
    expected = render(fake_gptalk.answer).text
    await tg.wait_for(lambda: tg.visible_text(user["id"], question["message_id"]) == expected, 30)
    assert tg.deliveries == [(tg.deliveries[0][0], 200)]

    # The answer is counted once the bot has the final edit's response: moments later.
    for _ in range(100):
        status, text = await get(http, health, "/metrics")
        if metric(text, "gptalk_bot_answers_completed_total") == 1:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    assert metric(text, "gptalk_bot_updates_received_total", type="message") == 1
    assert metric(text, "gptalk_bot_prompts_total") == 1
    assert metric(text, "gptalk_bot_answers_completed_total") == 1
    assert metric(text, "gptalk_bot_gptalk_logins_total") == 1
    assert metric(text, "gptalk_bot_telegram_calls_total", method="sendMessage", result="ok") >= 1
    assert metric(text, "gptalk_bot_first_chunk_seconds_count") == 1
    assert metric(text, "gptalk_bot_stream_seconds_count") == 1
    assert metric(text, "gptalk_bot_edits_per_answer_count") == 1
    assert metric(text, "gptalk_bot_limiter_wait_seconds_count", priority="answer") >= 1
    assert metric(text, "gptalk_bot_answers_streaming") == 0
    assert metric(text, "gptalk_bot_replica", replica="replica-a") == 1
    assert "gptalk_bot_event_loop_lag_seconds" in text
    assert str(user["id"]) not in text  # no chat or user ids in labels

    proc.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    entries = [json.loads(line) for line in err.decode().splitlines()]  # every line parses
    assert entries
    assert all(entry["replica"] == "replica-a" for entry in entries)
    [answered] = [e for e in entries if e["message"].startswith("answered in chat")]
    assert answered["chat"] == user["id"]
    assert answered["conversation"] == str(user["id"])
    assert answered["duration_s"] > 0
    assert SECRET not in err.decode()
    assert tg.token not in err.decode()


async def test_forged_requests_get_401_and_nothing_is_processed(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    env = webhook_env(tg, fake_gptalk, port, health_port=free_port(), REDIS_URL=redis_url)
    await launch(procs, http, env, tmp_path)
    tg.deliver = False
    user = tg.add_user(5, "Eve")
    tg.user_message(tg.private_chat(user), user, "forged")
    [update] = tg.take_updates()
    url = f"http://127.0.0.1:{port}{PATH}"
    assert (await tg.post_update(update, url, ""))[0] == 401
    assert (await tg.post_update(update, url, "wrong-secret"))[0] == 401
    assert (await tg.post_update(update, url, SECRET[:-1]))[0] == 401
    await asyncio.sleep(1.0)
    assert not tg.calls_to("sendChatAction")
    assert not tg.calls_to("sendMessage")
    assert fake_gptalk.prompts == []
    # The same update with the secret is processed: the forged copies claimed nothing.
    assert (await tg.post_update(update, url, SECRET))[0] == 200
    await tg.wait_for(lambda: bool(tg.bot_messages(5)), 30)


async def test_telegram_is_answered_before_the_update_is_processed(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    env = webhook_env(tg, fake_gptalk, port, health_port=free_port(), REDIS_URL=redis_url)
    await launch(procs, http, env, tmp_path)
    fake_gptalk.hold = asyncio.Event()  # no chunk until the webhook response is in
    tg.deliver = False
    user = tg.add_user(6, "Ann")
    question = tg.user_message(tg.private_chat(user), user, "take your time")
    [update] = tg.take_updates()
    status, _ = await asyncio.wait_for(tg.post_update(update), 10)
    assert status == 200
    assert not tg.bot_messages(6)  # acknowledged with nothing answered yet
    await tg.wait_for(lambda: fake_gptalk.streams == 1, 30)  # it is being processed
    fake_gptalk.hold.set()
    expected = render(fake_gptalk.answer).text
    await tg.wait_for(lambda: tg.visible_text(6, question["message_id"]) == expected, 30)


async def test_a_duplicate_update_sent_to_two_replicas_is_answered_once(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    ports, health = [free_port(), free_port()], [free_port(), free_port()]
    for i, port in enumerate(ports):
        env = webhook_env(
            tg,
            fake_gptalk,
            ports[0],
            health_port=health[i],
            REDIS_URL=redis_url,
            REPLICA_ID=f"r{i}",
        )
        env["WEBHOOK_PORT"] = str(port)  # both behind the same public URL
        await launch(procs, http, env, tmp_path)
    tg.deliver = False
    user = tg.add_user(8, "Bob")
    question = tg.user_message(tg.private_chat(user), user, "only once please")
    [update] = tg.take_updates()
    statuses = await asyncio.gather(
        *(tg.post_update(update, f"http://127.0.0.1:{port}{PATH}") for port in ports)
    )
    assert [status for status, _ in statuses] == [200, 200]
    expected = render(fake_gptalk.answer).text
    await tg.wait_for(lambda: tg.visible_text(8, question["message_id"]) == expected, 30)
    await asyncio.sleep(1.0)
    assert fake_gptalk.prompts == ["only once please"]
    assert len([m for m in tg.bot_messages(8) if m.reply_to == question["message_id"]]) == 1
    texts = [(await get(http, port, "/metrics"))[1] for port in health]
    assert sum(metric(t, "gptalk_bot_webhook_duplicates_total") for t in texts) == 1


async def test_redis_down_gives_503_so_telegram_redelivers(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    exe = shutil.which("redis-server")
    assert exe is not None
    (tmp_path / "redis").mkdir()
    redis_proc, redis_port = start_redis(exe, tmp_path / "redis")
    try:
        health = free_port()
        env = webhook_env(
            tg,
            fake_gptalk,
            free_port(),
            health_port=health,
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )
        await launch(procs, http, env, tmp_path)
    finally:
        stop_process(redis_proc)
    status, body = await get(http, health, "/readyz")
    assert (status, "Redis" in body) == (503, True)
    tg.deliver = False
    user = tg.add_user(9, "Cy")
    tg.user_message(tg.private_chat(user), user, "anyone there?")
    [update] = tg.take_updates()
    assert (await tg.post_update(update))[0] == 503
    await asyncio.sleep(0.5)
    assert not tg.calls_to("sendMessage")
    assert fake_gptalk.prompts == []


async def test_draining_replica_answers_503_then_finishes_its_answers(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    health = free_port()
    env = webhook_env(
        tg, fake_gptalk, free_port(), health_port=health, REDIS_URL=redis_url, SHUTDOWN_TIMEOUT="30"
    )
    proc = await launch(procs, http, env, tmp_path)
    fake_gptalk.hold = asyncio.Event()
    user = tg.add_user(10, "Dee")
    question = tg.user_message(tg.private_chat(user), user, "a long one")
    await tg.wait_for(lambda: fake_gptalk.streams == 1, 30)
    proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await get(http, health, "/readyz"))[0] != 503:
        assert loop.time() < deadline, "/readyz never turned 503"
        await asyncio.sleep(0.05)
    assert (await get(http, health, "/healthz"))[0] == 200
    tg.deliver = False
    other = tg.add_user(11, "Eli")
    tg.user_message(tg.private_chat(other), other, "too late")
    [late] = tg.take_updates()
    assert (await tg.post_update(late))[0] == 503
    fake_gptalk.hold.set()  # the running answer completes during the drain
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert tg.visible_text(10, question["message_id"]) == render(fake_gptalk.answer).text
    assert fake_gptalk.prompts == ["a long one"]


async def test_webhook_url_without_secret_exits_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    env = bot_env(tg, fake_gptalk, WEBHOOK_URL="https://bot.example/tg/hook")
    proc = await start_bot(env, tmp_path)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "gptalk-bot: configuration error: WEBHOOK_SECRET: is required when WEBHOOK_URL is set"
    ]
    assert not tg.calls


async def test_pending_updates_are_dropped_only_when_the_url_changes(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
) -> None:
    env = webhook_env(
        tg,
        fake_gptalk,
        free_port(),
        health_port=free_port(),
        REDIS_URL=redis_url,
        DROP_PENDING_UPDATES="true",
    )
    tg.webhook = {"url": "https://old.example/hook", "secret_token": None, "allowed_updates": None}
    tg.deliver = False
    user = tg.add_user(12, "Fay")
    tg.user_message(tg.private_chat(user), user, "sent to the old URL")
    proc = await launch(procs, http, env, tmp_path)
    [first] = tg.calls_to("setWebhook")
    assert first.params["drop_pending_updates"] is True  # a new URL: old updates go
    assert tg.pending_updates == []
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 60)

    # A restart (a rolling deploy) on the same URL keeps what waits for the replicas.
    question = tg.user_message(tg.private_chat(user), user, "sent during the restart")
    await launch(procs, http, env, tmp_path)
    second = tg.calls_to("setWebhook")[1]
    assert not second.params.get("drop_pending_updates")
    assert second.params["secret_token"] == SECRET
    assert len(tg.pending_updates) == 1
    tg.deliver = True
    expected = render(fake_gptalk.answer).text
    await tg.wait_for(lambda: tg.visible_text(12, question["message_id"]) == expected, 30)


async def test_two_pollers_get_one_clear_conflict_line(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    env = bot_env(tg, fake_gptalk, REDIS_URL=redis_url)
    first = await start_bot(env, tmp_path)
    procs.append(first)
    await tg.wait_for(lambda: tg.long_poll_pending, 30)
    second = await start_bot(env, tmp_path)
    procs.append(second)

    def conflicts() -> int:
        return len([c for c in tg.calls_to("getUpdates") if c.error_code == 409])

    await tg.wait_for(lambda: conflicts() >= 6, 60)  # each has hit it several times
    logs = []
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        logs.append(err.decode())
    together = "".join(logs)
    # \b keeps a replica name such as "vm:13409" (the pid) from counting as a 409
    lines = [line for line in together.splitlines() if re.search(r"\b409\b|Conflict", line)]
    assert 1 <= len(lines) <= 2, lines  # at most one per process
    assert all("only one may poll" in line and "WEBHOOK_URL" in line for line in lines)
    assert "TelegramConflictError" not in together
    assert "Sleep for" not in together
