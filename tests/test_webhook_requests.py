"""What reaches the public webhook besides Telegram's updates: forged secrets (any bytes),
malformed bodies, updates of a type this bot does not know. ``python -m bot`` as a real
process; each answer is a plain status, and the log stays short and free of tracebacks."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.transport.webhook import ForgedLog
from tests.bot_process import start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.webhook_process import PATH, SECRET, free_port, raw_post, webhook_env

SECRET_HEADER = b"X-Telegram-Bot-Api-Secret-Token"
JSON = b"application/json"


# Redis flushed for each test: every fake Bot API numbers its updates from 1, and claims
# last 24 h.
pytestmark = pytest.mark.usefixtures("redis")


class Replica:
    """One webhook replica logging JSON lines, and what it logged once stopped."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    async def post(self, body: bytes, secret: bytes = SECRET.encode(), **headers: bytes) -> int:
        sent = {SECRET_HEADER: secret, b"Content-Type": JSON}
        sent.update({name.replace("_", "-").encode(): value for name, value in headers.items()})
        return await raw_post(self.port, PATH, sent, body)

    async def cut_off(self, body: bytes) -> None:
        """The headers and half the body, then the connection closes."""
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body[: len(body) // 2]
        )  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async def stop(self) -> tuple[str, list[dict[str, Any]]]:
        """The raw log and its entries, after a clean exit."""
        self.proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        assert self.proc.returncode == 0, err.decode()
        text = err.decode()
        return text, [json.loads(line) for line in text.splitlines()]


@pytest.fixture
async def replica(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis_url: str,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> Replica:
    port = free_port()
    env = webhook_env(
        tg, fake_gptalk, port, health_port=free_port(), REDIS_URL=redis_url, LOG_FORMAT="json"
    )
    proc = await start_bot(env, tmp_path)
    procs.append(proc)
    # Registered: the webhook listener is up (it opens first). Not /readyz, so that
    # these checks stand apart from where health is served.
    await tg.wait_for(lambda: bool(tg.calls_to("setWebhook")), 30)
    tg.deliver = False  # the test posts
    return Replica(proc, port)


def update(tg: FakeTelegram, user_id: int, text: str) -> bytes:
    user = tg.add_user(user_id, "Ann")
    tg.user_message(tg.private_chat(user), user, text)
    [taken] = tg.take_updates()
    return json.dumps(taken).encode()


def no_errors(log: str, entries: list[dict[str, Any]]) -> None:
    assert "Traceback" not in log
    assert [e for e in entries if e["level"] in ("ERROR", "CRITICAL")] == []


async def test_any_wrong_secret_header_is_a_plain_401(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, replica: Replica
) -> None:
    body = update(tg, 31, "forged")
    for secret in (
        "sécret".encode(),  # non-ASCII: secrets.compare_digest refuses such a str
        SECRET.encode() + "é".encode(),
        b"\xff\xfe\xfd",  # not UTF-8 at all
        "секрет-webhook-s3cret_XYZ".encode(),
    ):
        assert await replica.post(body, secret) == 401, secret
    await asyncio.sleep(0.5)
    assert not tg.calls_to("sendMessage")
    assert await replica.post(body) == 200  # the forged copies claimed nothing
    await tg.wait_for(lambda: bool(tg.bot_messages(31)), 30)
    log, entries = await replica.stop()
    no_errors(log, entries)


async def test_forged_requests_are_logged_once_with_a_count(
    tg: FakeTelegram, replica: Replica
) -> None:
    body = update(tg, 32, "forged")
    statuses = [await replica.post(body, f"wrong-{n}".encode()) for n in range(200)]
    assert statuses == [401] * 200
    log, entries = await replica.stop()
    forged = [e for e in entries if "without the right secret token" in e["message"]]
    assert len(forged) == 2, forged  # the first, then the rest counted when it stops
    assert forged[0]["level"] == "WARNING"
    assert forged[0]["message"].endswith("from 127.0.0.1")
    assert forged[1]["message"].endswith("since the last line: 199")
    assert len(log) < 10_000


async def test_malformed_bodies_with_the_secret_are_400_without_a_traceback(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, replica: Replica
) -> None:
    good = update(tg, 33, "after the junk")
    await replica.cut_off(good)
    assert await replica.post(b"[" * 200_000) == 400  # RecursionError in the JSON parser
    assert await replica.post(good, Content_Type=JSON + b"; charset=x-unknown") == 400
    assert await replica.post(b"\xff{}", Content_Type=JSON + b"; charset=utf-8") == 400
    assert await replica.post(b"not json") == 400
    assert await replica.post(b'{"update_id": "five"}') == 400
    assert not tg.calls_to("sendMessage")
    assert await replica.post(good) == 200  # and the replica goes on
    await tg.wait_for(lambda: bool(tg.bot_messages(33)), 30)
    log, entries = await replica.stop()
    no_errors(log, entries)
    refused = [e for e in entries if e["message"].startswith("webhook request that is not")]
    assert len(refused) == 6
    assert {e["level"] for e in refused} == {"WARNING"}


async def test_an_update_of_an_unknown_type_is_ignored_quietly(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, replica: Replica
) -> None:
    assert await replica.post(b'{"update_id": 5, "some_future_field": {}}') == 200
    good = update(tg, 34, "and a message")
    assert await replica.post(good) == 200
    await tg.wait_for(lambda: bool(tg.bot_messages(34)), 30)
    assert fake_gptalk.prompts == ["and a message"]
    log, entries = await replica.stop()
    no_errors(log, entries)
    assert "Detected unknown update type" not in log


def test_forged_log_writes_a_line_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    forged = ForgedLog(every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "bot.transport.webhook")

    def lines() -> list[str]:
        taken = [record.getMessage() for record in caplog.records]
        caplog.clear()
        return taken

    forged.forged("10.0.0.1")
    assert lines() == ["webhook request without the right secret token from 10.0.0.1"]
    for _ in range(5):
        now[0] += 10
        forged.forged("10.0.0.2")
    assert lines() == []  # 50 s: within the minute
    now[0] += 10
    forged.forged("10.0.0.3")
    assert lines() == [
        "webhook request without the right secret token from 10.0.0.3 "
        "(5 more since the last line, not logged one by one)"
    ]
    forged.flush()
    assert lines() == []  # nothing left to count
    now[0] += 1
    forged.forged("10.0.0.4")
    forged.flush()
    assert lines() == ["webhook requests without the right secret token since the last line: 1"]
