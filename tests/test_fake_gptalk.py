"""Tests of the fake GPTalk service itself, spoken to with plain aiohttp."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fake_gptalk import (
    DEFAULT_ANSWER,
    LOGIN_PATH,
    STREAM_PATH,
    SUBMIT_PATH,
    FakeGPTalk,
    Fault,
)

ROOT = Path(__file__).resolve().parent.parent
EMOJI_ANSWER = "Привет, мир! 🍂🍁 naïve café — 日本語 👩‍👩‍👧 end"


def _submit_body(content: str = "Write a short poem about autumn.") -> dict[str, Any]:
    return {
        "content": content,
        "accept": "stream",
        "from": 1,
        "model": "gpt-3.5-turbo",
        "is_mobile": 0,
        "user_agent": "Mozilla/5.0 test",
        "is_open_ctx": 0,
        "prompt": "",
        "roid": 111,
        "temperature": 0,
        "ctx_msg_count": 3,
        "created_at": int(time.time()),
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


async def _login(s: aiohttp.ClientSession, url: str) -> str:
    body = {"fingerprint": secrets.token_hex(16), "platform": "fingerprint"}
    async with s.post(url + LOGIN_PATH, json=body) as r:
        assert r.status == 200
        token: str = (await r.json())["data"]["token"]
        return token


async def _submit(
    s: aiohttp.ClientSession, url: str, token: str | None, content: str = "hi"
) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    async with s.post(url + SUBMIT_PATH, json=_submit_body(content), headers=headers) as r:
        return r.status, await r.json()


async def _stream_token(s: aiohttp.ClientSession, url: str, content: str = "hi") -> str:
    status, body = await _submit(s, url, await _login(s, url), content)
    assert status == 200
    token: str = body["data"]["token"]
    return token


async def _read_stream(s: aiohttp.ClientSession, url: str, stream_token: str) -> list[str]:
    """All non-blank lines of the stream body, decoded (raises on a broken body)."""
    lines: list[str] = []
    async with s.get(url + STREAM_PATH, params={"token": stream_token}) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for raw in r.content:
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                lines.append(line)
    return lines


async def _collect(
    s: aiohttp.ClientSession, url: str, stream_token: str, into: list[bytes]
) -> None:
    async with s.get(url, params={"token": stream_token}) as r:
        async for raw in r.content:
            into.append(raw)


def _contents(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :])["content"])
    return out


async def test_login_shape_and_counters(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fp = secrets.token_hex(16)
    before = int(time.time())
    async with session.post(
        fake_gptalk.url + LOGIN_PATH, json={"fingerprint": fp, "platform": "fingerprint"}
    ) as r:
        assert r.status == 200
        data = (await r.json())["data"]
    assert data["fingerprint"] == fp
    assert before + 3600 <= data["expires_at"] <= int(time.time()) + 3600
    assert fake_gptalk.logins == 1
    assert fake_gptalk.issued_tokens() == [data["token"]]
    assert fake_gptalk.token_uses == {data["token"]: 0}
    second = await _login(session, fake_gptalk.url)
    assert second != data["token"]
    assert fake_gptalk.logins == 2
    rec = fake_gptalk.requests_to("login")[0]
    assert (rec.method, rec.path, rec.json) == (
        "POST",
        LOGIN_PATH,
        {"fingerprint": fp, "platform": "fingerprint"},
    )
    assert rec.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "body",
    [
        {"fingerprint": "ABCDEF" * 5 + "AB", "platform": "fingerprint"},
        {"fingerprint": "abc", "platform": "fingerprint"},
        {"fingerprint": "a" * 32, "platform": "web"},
        {"fingerprint": "a" * 32},
        ["not", "an", "object"],
    ],
)
async def test_login_rejects_bad_body(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession, body: Any
) -> None:
    async with session.post(fake_gptalk.url + LOGIN_PATH, json=body) as r:
        assert r.status == 400
    assert fake_gptalk.logins == 0
    assert len(fake_gptalk.requests) == 1


async def test_submit_and_stream_default_answer(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    token = await _login(session, fake_gptalk.url)
    status, body = await _submit(session, fake_gptalk.url, token, "Write a poem")
    assert status == 200
    stream_token = body["data"]["token"]
    assert fake_gptalk.issued_stream_tokens() == [stream_token]
    assert fake_gptalk.prompts == ["Write a poem"]
    assert fake_gptalk.token_uses[token] == 1
    assert fake_gptalk.requests_to("submit")[0].headers["authorization"] == f"Bearer {token}"

    lines = await _read_stream(session, fake_gptalk.url, stream_token)
    assert lines[-1] == "data: [DONE]"
    assert any(not line.startswith("data: ") for line in lines)  # an ignorable line is there
    contents = _contents(lines)
    assert contents[-1] == DEFAULT_ANSWER
    assert all(b.startswith(a) for a, b in itertools.pairwise(contents))
    assert len(contents) == -(-len(DEFAULT_ANSWER) // 8)
    assert fake_gptalk.streams == 1
    assert fake_gptalk.requests_to("stream")[0].query == {"token": stream_token}

    # a stream token works once
    async with session.get(fake_gptalk.url + STREAM_PATH, params={"token": stream_token}) as r:
        assert r.status == 404
    async with session.get(fake_gptalk.url + STREAM_PATH, params={"token": "guess"}) as r:
        assert r.status == 404


@pytest.mark.parametrize("chunk_size", [1, 3, 0])
async def test_multibyte_answer_travels_raw(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession, chunk_size: int
) -> None:
    fake_gptalk.answer = EMOJI_ANSWER
    fake_gptalk.chunk_size = chunk_size
    stream_token = await _stream_token(session, fake_gptalk.url)
    async with session.get(fake_gptalk.url + STREAM_PATH, params={"token": stream_token}) as r:
        raw = await r.read()
    assert "🍂".encode() in raw  # not \ud83c-escaped
    lines = [line for line in raw.decode("utf-8").split("\n") if line]
    contents = _contents(lines)
    assert contents[-1] == EMOJI_ANSWER
    expected = len(EMOJI_ANSWER) if chunk_size == 1 else (1 if chunk_size == 0 else None)
    if expected is not None:
        assert len(contents) == expected
    assert lines[-1] == "data: [DONE]"


async def test_reply_callback_long_answer_and_empty_answer(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.reply = lambda prompt: prompt.upper() * 2
    fake_gptalk.chunk_size = 50_000
    prompt = "ab" * 60_000
    stream_token = await _stream_token(session, fake_gptalk.url, prompt)
    async with session.get(fake_gptalk.url + STREAM_PATH, params={"token": stream_token}) as r:
        raw = await r.read()
    contents = _contents([line for line in raw.decode().split("\n") if line])
    assert contents[-1] == prompt.upper() * 2
    assert len(contents) == 5

    fake_gptalk.reply = None
    fake_gptalk.answer = ""
    stream_token = await _stream_token(session, fake_gptalk.url)
    lines = await _read_stream(session, fake_gptalk.url, stream_token)
    assert _contents(lines) == []
    assert lines[-1] == "data: [DONE]"


async def test_spent_token_gets_200_without_data(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    token = await _login(session, fake_gptalk.url)
    for _ in range(5):
        status, body = await _submit(session, fake_gptalk.url, token)
        assert status == 200
        assert "token" in body["data"]
    status, body = await _submit(session, fake_gptalk.url, token)
    assert status == 200
    assert "data" not in body
    assert fake_gptalk.spent_rejections == 1
    assert fake_gptalk.submits == 5
    assert max(fake_gptalk.token_uses.values()) == fake_gptalk.max_uses


async def test_unauthorized(fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession) -> None:
    status, body = await _submit(session, fake_gptalk.url, None)
    assert (status, body) == (401, {"code": 401, "message": "unauthorized"})
    status, _ = await _submit(session, fake_gptalk.url, "made-up")
    assert status == 401
    fake_gptalk.token_lifetime = -5
    expired = await _login(session, fake_gptalk.url)
    status, _ = await _submit(session, fake_gptalk.url, expired)
    assert status == 401
    assert fake_gptalk.unauthorized == 3
    assert fake_gptalk.submits == 0


async def test_submit_rejects_missing_key(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    token = await _login(session, fake_gptalk.url)
    body = _submit_body()
    del body["roid"]
    async with session.post(
        fake_gptalk.url + SUBMIT_PATH, json=body, headers={"authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 400
        assert "roid" in (await r.json())["message"]
    assert fake_gptalk.token_uses[token] == 0


async def test_status_and_no_data_faults(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    url = fake_gptalk.url
    fake_gptalk.fail("login", status=503)
    async with session.post(url + LOGIN_PATH, json={}) as r:
        assert r.status == 503
    token = await _login(session, url)

    fake_gptalk.fail("submit", status=500, times=2)
    assert (await _submit(session, url, token))[0] == 500
    assert (await _submit(session, url, token))[0] == 500
    fake_gptalk.fail("submit", Fault(no_data=True))
    status, body = await _submit(session, url, token)
    assert status == 200
    assert "data" not in body
    assert fake_gptalk.token_uses[token] == 0  # faulted submits do not count a use
    status, body = await _submit(session, url, token)
    assert status == 200
    stream_token = body["data"]["token"]

    fake_gptalk.fail("stream", status=502)
    async with session.get(url + STREAM_PATH, params={"token": stream_token}) as r:
        assert r.status == 502
    assert _contents(await _read_stream(session, url, stream_token))[-1] == DEFAULT_ANSWER
    assert len(fake_gptalk.requests) == 8  # faulted requests are recorded too
    assert fake_gptalk.logins == 1
    assert fake_gptalk.submits == 1


async def test_cut_after_breaks_the_body(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.fail("stream", cut_after=2)
    stream_token = await _stream_token(session, fake_gptalk.url)
    got: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await _collect(session, fake_gptalk.url + STREAM_PATH, stream_token, got)
    data = [line for line in got if line.startswith(b"data: ")]
    assert len(data) == 2
    assert b"data: [DONE]\n" not in got


async def test_cut_after_beyond_the_end_still_withholds_done(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.answer = "short"
    fake_gptalk.fail("stream", cut_after=99)
    stream_token = await _stream_token(session, fake_gptalk.url)
    with pytest.raises(aiohttp.ClientPayloadError):
        await _read_stream(session, fake_gptalk.url, stream_token)


async def test_end_after_ends_cleanly_without_done(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.fail("stream", end_after=3)
    stream_token = await _stream_token(session, fake_gptalk.url)
    lines = await _read_stream(session, fake_gptalk.url, stream_token)
    assert len(_contents(lines)) == 3
    assert "data: [DONE]" not in lines


async def test_malformed_after_injects_one_bad_line(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.fail("stream", malformed_after=1)
    stream_token = await _stream_token(session, fake_gptalk.url)
    lines = await _read_stream(session, fake_gptalk.url, stream_token)
    data = [line for line in lines if line.startswith("data: ")]
    assert data[1] == "data: {not json"
    assert data[-1] == "data: [DONE]"
    good = [line for line in data if line not in ("data: {not json", "data: [DONE]")]
    assert json.loads(good[-1][6:])["content"] == DEFAULT_ANSWER


async def test_stall_delays_after_some_lines(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    fake_gptalk.fail("stream", stall=0.3, after=1)
    stream_token = await _stream_token(session, fake_gptalk.url)
    stamps: list[tuple[float, bytes]] = []
    async with session.get(fake_gptalk.url + STREAM_PATH, params={"token": stream_token}) as r:
        async for raw in r.content:
            if raw.startswith(b"data: "):
                stamps.append((time.monotonic(), raw))
    assert stamps[-1][1] == b"data: [DONE]\n"
    assert stamps[1][0] - stamps[0][0] >= 0.25
    assert stamps[-1][0] - stamps[1][0] < 0.25

    # a stall longer than the client's patience: the client times out
    fake_gptalk.fail("submit", stall=2)
    token = await _login(session, fake_gptalk.url)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            fake_gptalk.url + SUBMIT_PATH,
            json=_submit_body(),
            headers={"authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as r:
            await r.read()
    assert time.monotonic() - started < 1


async def test_reset_counters_keeps_tokens(
    fake_gptalk: FakeGPTalk, session: aiohttp.ClientSession
) -> None:
    token = await _login(session, fake_gptalk.url)
    await _submit(session, fake_gptalk.url, token)
    fake_gptalk.reset_counters()
    assert (fake_gptalk.logins, fake_gptalk.submits, fake_gptalk.requests) == (0, 0, [])
    assert fake_gptalk.prompts == []
    assert (await _submit(session, fake_gptalk.url, token))[0] == 200
    assert fake_gptalk.token_uses[token] == 2


async def test_fake_as_context_manager_on_fixed_settings() -> None:
    async with FakeGPTalk(answer="x", max_uses=1) as fake:
        assert fake.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            token = await _login(s, fake.url)
            assert (await _submit(s, fake.url, token))[0] == 200
            status, body = await _submit(s, fake.url, token)
            assert status == 200
            assert "data" not in body
    assert fake.spent_rejections == 1


async def test_cli_serves_until_interrupted() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fake_gptalk",
        "--port",
        "0",
        "--answer",
        "hello",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert first.startswith("fake GPTalk listening on http://127.0.0.1:")
        url = first.split()[-1]
        async with aiohttp.ClientSession() as s:
            stream_token = await _stream_token(s, url)
            assert _contents(await _read_stream(s, url, stream_token))[-1] == "hello"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_redis_fixture_works(redis: aioredis.Redis) -> None:
    assert await redis.get("k") is None
    await redis.set("k", "v")
    assert await redis.get("k") == b"v"
