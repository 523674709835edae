"""Tests of :class:`gptalk.GPTalkClient` and the seed API :class:`gptalk.GPTalk`.

Everything goes through real aiohttp against the in-process fake GPTalk service
(``tests/fake_gptalk.py``); nothing of gptalk or aiohttp is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gptalk import (
    AnswerStream,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    GPTalk,
    GPTalkClient,
    GPTalkError,
    MemoryTokenStore,
    Messages,
    ProtocolError,
    StreamInterruptedError,
    format_prompt,
)
from tests.fake_gptalk import (
    DEFAULT_ANSWER,
    LOGIN_PATH,
    STREAM_PATH,
    SUBMIT_KEYS,
    SUBMIT_PATH,
    FakeGPTalk,
    RecordedRequest,
)

ROOT = Path(__file__).resolve().parent.parent

MESSAGES: Messages = [{"role": "user", "content": "Write a short poem about autumn."}]
CHAT: Messages = [
    {"role": "system", "content": "You are a poet."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "A poem, please."},
]
FINGERPRINT = re.compile(r"[0-9a-f]{32}")
CHROME_UA = re.compile(r"Mozilla/5\.0 \(X11; Linux x86_64\).*Chrome/\d+.* Safari/[\d.]+")
MULTIBYTE = (
    "Осень пришла — золотые листья. "
    "秋の夕暮れ、紅葉が舞う。 "
    "가을 하늘 "
    "👩‍👩‍👧‍👦 family, 👨🏽‍💻 coder, 🏳️‍🌈 flag, "
    "🇺🇦🇯🇵🇩🇪 flags, "
    "é (e + combining acute), 𝄞 clef, 🍂🍁\n"
)

# Short enough to keep the file fast, long enough to be a real stall.
READ_TIMEOUT = 0.3
STALL = 2.0

E = TypeVar("E", bound=BaseException)


# ---------------------------------------------------------------------------- helpers


def body(request: RecordedRequest) -> dict[str, Any]:
    """The JSON object a recorded request carried."""
    assert isinstance(request.json, dict), request.json
    return request.json


def client_for(fake: FakeGPTalk, **kwargs: Any) -> GPTalkClient:
    return GPTalkClient(base_url=fake.url, **kwargs)


class Holder:
    """A seed-API style auth holder for :class:`MemoryTokenStore`."""

    def __init__(self) -> None:
        self._auth: dict[str, Any] | None = None
        self.used_times = 0


async def consume(
    client: GPTalkClient, messages: Messages = MESSAGES, **kwargs: Any
) -> tuple[list[str], Exception | None]:
    """Stream an answer; return the deltas that arrived and the exception, if any."""
    deltas: list[str] = []
    try:
        async with client.stream(messages, **kwargs) as answer:
            async for delta in answer:
                deltas.append(delta)
    except Exception as exc:
        return deltas, exc
    return deltas, None


async def expect_error(
    client: GPTalkClient, error_type: type[E], **kwargs: Any
) -> tuple[list[str], E]:
    """Stream an answer that must fail with exactly ``error_type``."""
    deltas, exc = await consume(client, **kwargs)
    assert exc is not None, "expected an error, the answer completed"
    assert isinstance(exc, GPTalkError), f"not a GPTalkError: {exc!r}"
    assert type(exc) is error_type, f"expected {error_type.__name__}, got {exc!r}"
    return deltas, exc


def closed_port_url() -> str:
    """The URL of a local port nobody listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def blackhole_url() -> Iterator[str]:
    """A local port whose accept queue is full: connecting to it hangs (SYNs are dropped)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def redirect_stream_to(fake: FakeGPTalk, client: GPTalkClient, base_url: str) -> None:
    """Make the next stream request go to ``base_url``: login and submit still reach the fake.

    The fake calls ``reply`` while answering the submit, i.e. after the client has
    built the submit request and before it builds the stream request.
    """

    def reply(content: str) -> str:
        client.base_url = base_url
        fake.reply = None
        return fake.answer

    fake.reply = reply


def leak_texts(exc: BaseException | None, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every text through which a token could leak: the error and the captured logs."""
    texts: list[str] = []
    if exc is not None:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        texts += [repr(value) for value in vars(exc).values()]
        # Every linked exception, even the suppressed __context__ a traceback hides:
        # error reporters (e.g. Sentry) walk those too.
        seen: set[int] = set()
        pending: list[BaseException | None] = [exc]
        while pending:
            link = pending.pop()
            if link is None or id(link) in seen:
                continue
            seen.add(id(link))
            texts += [str(link), repr(link)]
            pending += [link.__cause__, link.__context__]
    for record in caplog.records:
        if record.name.startswith(("aiohttp.access", "aiohttp.server")):
            continue  # the fake server's own loggers
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(record.exc_info[1])))
        if record.stack_info:
            texts.append(record.stack_info)
    texts.append(caplog.text)
    return texts


def assert_no_token(
    fake: FakeGPTalk, exc: BaseException | None, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = fake.issued_tokens() + fake.issued_stream_tokens()
    assert tokens, "the scenario issued no token: nothing to check"
    for text in leak_texts(exc, caplog):
        for token in tokens:
            assert token not in text, f"a token leaked into: {text[:500]!r}"


# ---------------------------------------------------------------------------- 1. request shapes


async def test_login_request_shape(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk, max_uses=1) as client:
        await client.complete(MESSAGES)
        await client.complete(MESSAGES)
    logins = fake_gptalk.requests_to("login")
    assert len(logins) == 2
    for request in logins:
        assert request.method == "POST"
        assert request.path == LOGIN_PATH
        assert request.query == {}
        assert set(body(request)) == {"fingerprint", "platform"}
        assert body(request)["platform"] == "fingerprint"
        assert FINGERPRINT.fullmatch(body(request)["fingerprint"])
        assert "authorization" not in request.headers
    assert body(logins[0])["fingerprint"] != body(logins[1])["fingerprint"]  # new per login


async def test_submit_request_shape(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        await client.complete(CHAT)
    [submit] = fake_gptalk.requests_to("submit")
    assert submit.method == "POST"
    assert submit.path == SUBMIT_PATH
    assert submit.headers["authorization"] == f"Bearer {fake_gptalk.issued_tokens()[0]}"
    sent = body(submit)
    assert set(sent) == SUBMIT_KEYS
    assert len(sent) == 12
    timestamp = int(submit.headers["x-auth-timestamp"])
    assert sent == {
        "content": format_prompt(CHAT),
        "accept": "stream",
        "from": 1,
        "model": "gpt-3.5-turbo",
        "is_mobile": 0,
        "user_agent": submit.headers["user-agent"],
        "is_open_ctx": 0,
        "prompt": "",
        "roid": 111,
        "temperature": 0,
        "ctx_msg_count": 3,
        "created_at": timestamp,
    }
    assert sent["content"] == (
        "System: You are a poet.\nUser: Hi\nAssistant: Hello!\nUser: A poem, please.\nAssistant:"
    )
    assert isinstance(sent["created_at"], int)
    assert abs(sent["created_at"] - time.time()) < 5
    assert fake_gptalk.prompts == [format_prompt(CHAT)]


async def test_single_message_is_sent_unchanged(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        await client.complete(MESSAGES)
    assert fake_gptalk.prompts == ["Write a short poem about autumn."]


async def test_stream_request_shape(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        await client.complete(MESSAGES)
    [stream] = fake_gptalk.requests_to("stream")
    assert stream.method == "GET"
    assert stream.path == STREAM_PATH
    assert stream.query == {"token": fake_gptalk.issued_stream_tokens()[0]}
    assert "authorization" not in stream.headers
    assert [r.path for r in fake_gptalk.requests] == [LOGIN_PATH, SUBMIT_PATH, STREAM_PATH]


async def test_every_request_carries_the_spec_headers(fake_gptalk: FakeGPTalk) -> None:
    before = int(time.time())
    async with client_for(fake_gptalk, max_uses=1) as client:
        await client.complete(MESSAGES)
        await client.complete(CHAT)
    after = int(time.time())
    assert len(fake_gptalk.requests) == 6
    for request in fake_gptalk.requests:
        headers = request.headers
        assert headers["accept"] == "*/*"
        assert headers["content-type"] == "application/json"
        assert headers["origin"] == fake_gptalk.url
        assert CHROME_UA.fullmatch(headers["user-agent"]), headers["user-agent"]
        chrome = re.search(r"Chrome/(\d+)", headers["user-agent"])
        assert chrome is not None
        assert f'"Google Chrome";v="{chrome.group(1)}"' in headers["sec-ch-ua"]
        assert f'"Chromium";v="{chrome.group(1)}"' in headers["sec-ch-ua"]
        assert headers["sec-ch-ua-mobile"] == "?0"
        assert headers["sec-ch-ua-platform"] == '"Linux"'
        assert headers["sec-fetch-dest"] == "empty"
        assert headers["sec-fetch-mode"] == "cors"
        assert headers["sec-fetch-site"] == "same-origin"
        assert headers["x-auth-appid"] == "2229"
        assert headers["x-auth-openid"] == ""
        assert headers["x-auth-platform"] == ""
        assert before <= int(headers["x-auth-timestamp"]) <= after


async def test_origin_is_the_base_url_without_trailing_slash(fake_gptalk: FakeGPTalk) -> None:
    async with GPTalkClient(base_url=fake_gptalk.url + "/") as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert {r.headers["origin"] for r in fake_gptalk.requests} == {fake_gptalk.url}


async def test_options_override_the_body(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        await client.complete(MESSAGES, options={"temperature": 0.7})
        await client.complete(MESSAGES, options={"ctx_msg_count": 5, "roid": 7})
        await client.complete(MESSAGES)
    first, second, third = (body(r) for r in fake_gptalk.requests_to("submit"))
    assert first["temperature"] == 0.7
    assert set(first) == SUBMIT_KEYS
    assert (second["ctx_msg_count"], second["roid"], second["temperature"]) == (5, 7, 0)
    assert third["temperature"] == 0  # overrides do not stick


async def test_unknown_option_raises_value_error(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        with pytest.raises(ValueError, match="bogus"):
            await client.complete(MESSAGES, options={"bogus": 1})
        with pytest.raises(ValueError, match="stream"):
            await consume_raising(client, options={"temperature": 1, "stream": True})
    assert fake_gptalk.requests == []  # nothing was sent


async def consume_raising(client: GPTalkClient, **kwargs: Any) -> list[str]:
    async with client.stream(MESSAGES, **kwargs) as answer:
        return [delta async for delta in answer]


async def test_model_per_call_and_client_default(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        await client.complete(MESSAGES)
        await client.complete(MESSAGES, model="gpt-4")
        await client.complete(MESSAGES, model="")
    async with client_for(fake_gptalk, model="gpt-4o") as client:
        await client.complete(MESSAGES)
        await client.complete(MESSAGES, model="gpt-3.5-turbo-16k")
    async with client_for(fake_gptalk, model="") as client:
        assert client.model == "gpt-3.5-turbo"
        await client.complete(MESSAGES)
    models = [body(r)["model"] for r in fake_gptalk.requests_to("submit")]
    assert models == [
        "gpt-3.5-turbo",
        "gpt-4",
        "gpt-3.5-turbo",
        "gpt-4o",
        "gpt-3.5-turbo-16k",
        "gpt-3.5-turbo",
    ]


# ---------------------------------------------------------------------------- 2. deltas


async def test_deltas_concatenate_to_the_answer(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        deltas, exc = await consume(client)
    assert exc is None
    assert "".join(deltas) == DEFAULT_ANSWER
    assert len(deltas) > 1
    assert all(deltas)  # no empty deltas


async def test_chunk_size_one_gives_one_character_per_delta(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.answer = "Hello, осень 🍂!"
    fake_gptalk.chunk_size = 1
    async with client_for(fake_gptalk) as client:
        deltas, exc = await consume(client)
    assert exc is None
    assert deltas == list("Hello, осень 🍂!")


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 11, 64])
async def test_multibyte_text_arrives_intact(fake_gptalk: FakeGPTalk, chunk_size: int) -> None:
    fake_gptalk.answer = MULTIBYTE * 3
    fake_gptalk.chunk_size = chunk_size
    async with client_for(fake_gptalk) as client:
        deltas, exc = await consume(client)
    assert exc is None
    assert "".join(deltas) == MULTIBYTE * 3
    if chunk_size == 1:
        assert deltas == list(MULTIBYTE * 3)


async def test_long_multibyte_answer_split_arbitrarily_by_tcp(fake_gptalk: FakeGPTalk) -> None:
    # Lines of ~100-300 KB of UTF-8: socket reads end at arbitrary bytes, inside characters.
    answer = (MULTIBYTE * (60_000 // len(MULTIBYTE) + 1))[:60_000]
    fake_gptalk.answer = answer
    fake_gptalk.chunk_size = 15_001
    async with client_for(fake_gptalk) as client:
        assert await client.complete(MESSAGES) == answer


async def test_100k_answer_in_large_chunks(fake_gptalk: FakeGPTalk) -> None:
    answer = "".join(f"{i:05d} autumn leaves fall.\n" for i in range(4_000))[:100_000]
    assert len(answer) == 100_000
    fake_gptalk.answer = answer
    fake_gptalk.chunk_size = 20_000
    async with client_for(fake_gptalk) as client:
        deltas, exc = await consume(client)
    assert exc is None
    assert "".join(deltas) == answer
    assert len(deltas) == 5


async def test_empty_answer_gives_no_deltas(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.answer = ""
    async with client_for(fake_gptalk) as client:
        deltas, exc = await consume(client)
        assert await client.complete(MESSAGES) == ""
    assert exc is None
    assert deltas == []


async def test_complete_returns_the_whole_text(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER
        assert await client.complete(CHAT) == DEFAULT_ANSWER
    assert fake_gptalk.submits == 2


async def test_answer_stream_text(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        answer = client.stream(MESSAGES)
        assert isinstance(answer, AnswerStream)
        assert answer.text == ""
        first = await anext(answer)
        assert answer.text == first
        second = await anext(answer)
        assert answer.text == first + second
        rest = [delta async for delta in answer]
        assert answer.text == first + second + "".join(rest) == DEFAULT_ANSWER
        await answer.aclose()


async def test_aclose_releases_the_connection(fake_gptalk: FakeGPTalk) -> None:
    # The answer stalls after its first line: only closing the stream can free its connection.
    fake_gptalk.fail("stream", stall=5, after=1)
    # One connection in the pool: a stream that kept it would block the next request.
    async with client_for(fake_gptalk, max_connections=1) as client:
        answer = client.stream(MESSAGES)
        first = await anext(answer)
        assert first == DEFAULT_ANSWER[:8]
        await answer.aclose()
        assert await asyncio.wait_for(client.complete(MESSAGES), 1) == DEFAULT_ANSWER
    assert fake_gptalk.streams == 2


async def test_async_with_releases_the_connection(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", stall=5, after=1)
    async with client_for(fake_gptalk, max_connections=1) as client:
        async with client.stream(MESSAGES) as answer:
            async for delta in answer:
                assert delta == DEFAULT_ANSWER[:8]
                break
        assert await asyncio.wait_for(client.complete(MESSAGES), 1) == DEFAULT_ANSWER
    assert fake_gptalk.streams == 2


async def test_client_closes_cleanly_after_leaving_early(
    fake_gptalk: FakeGPTalk, caplog: pytest.LogCaptureFixture
) -> None:
    fake_gptalk.fail("stream", stall=5, after=1)
    client = client_for(fake_gptalk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with client.stream(MESSAGES) as answer:
            await anext(answer)
        await client.close()
        # A closed client opens a new session on demand.
        try:
            assert await asyncio.wait_for(client.complete(MESSAGES), 1) == DEFAULT_ANSWER
        finally:
            await client.close()
        del answer
        gc.collect()
        await asyncio.sleep(0)
    assert [str(w.message) for w in caught] == []
    assert not [r for r in caplog.records if "nclosed" in r.getMessage()]


async def test_cancelled_request_releases_the_connection(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", stall=5, after=1)
    async with client_for(fake_gptalk, max_connections=1) as client:
        first_delta = asyncio.Event()

        async def read() -> None:
            async with client.stream(MESSAGES) as answer:
                async for _ in answer:
                    first_delta.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(first_delta.wait(), 2)  # the stream is now stalled mid-answer
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(client.complete(MESSAGES), 1) == DEFAULT_ANSWER


# ---------------------------------------------------------------------------- 3. re-login


@pytest.mark.parametrize(
    ("requests", "logins"), [(1, 1), (5, 1), (6, 2), (10, 2), (11, 3), (15, 3), (16, 4)]
)
async def test_login_every_max_uses_requests(
    fake_gptalk: FakeGPTalk, requests: int, logins: int
) -> None:
    async with client_for(fake_gptalk) as client:
        for _ in range(requests):
            assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert fake_gptalk.logins == logins
    assert fake_gptalk.submits == requests
    assert fake_gptalk.spent_rejections == 0
    assert fake_gptalk.unauthorized == 0
    assert max(fake_gptalk.token_uses.values()) <= 5


async def test_submits_use_the_current_token(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        for _ in range(7):
            await client.complete(MESSAGES)
    first, second = fake_gptalk.issued_tokens()
    bearers = [r.headers["authorization"] for r in fake_gptalk.requests_to("submit")]
    assert bearers == [f"Bearer {first}"] * 5 + [f"Bearer {second}"] * 2
    assert fake_gptalk.token_uses == {first: 5, second: 2}


async def test_max_uses_is_configurable(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk, max_uses=2) as client:
        for _ in range(5):
            await client.complete(MESSAGES)
    assert fake_gptalk.logins == 3
    assert sorted(fake_gptalk.token_uses.values()) == [1, 2, 2]


def test_max_uses_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_uses"):
        GPTalkClient(max_uses=0)


async def test_expired_token_triggers_login(fake_gptalk: FakeGPTalk) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        await client.complete(MESSAGES)
        assert fake_gptalk.logins == 1
        assert holder._auth is not None
        assert holder._auth["token"] == fake_gptalk.issued_tokens()[0]
        assert holder.used_times == 1
        holder._auth["expires_at"] = 0
        await client.complete(MESSAGES)
        assert fake_gptalk.logins == 2
        assert holder._auth is not None
        assert holder._auth["token"] == fake_gptalk.issued_tokens()[1]
        assert holder.used_times == 1
    second_bearer = fake_gptalk.requests_to("submit")[1].headers["authorization"]
    assert second_bearer == f"Bearer {fake_gptalk.issued_tokens()[1]}"
    assert fake_gptalk.unauthorized == 0


async def test_holder_mirrors_the_login_data(fake_gptalk: FakeGPTalk) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        for expected in (1, 2, 3, 4, 5, 1):
            await client.complete(MESSAGES)
            assert holder.used_times == expected
    assert holder._auth is not None
    login = fake_gptalk.requests_to("login")[1]
    assert holder._auth["token"] == fake_gptalk.issued_tokens()[1]
    assert holder._auth["fingerprint"] == body(login)["fingerprint"]
    assert isinstance(holder._auth["expires_at"], int)


async def test_cleared_holder_forces_login(fake_gptalk: FakeGPTalk) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        await client.complete(MESSAGES)
        holder._auth = None
        await client.complete(MESSAGES)
    assert fake_gptalk.logins == 2


async def test_server_side_spent_token_triggers_one_relogin(fake_gptalk: FakeGPTalk) -> None:
    # The service's quota is smaller than the client's: the 4th submit answers without data.
    fake_gptalk.max_uses = 3
    async with client_for(fake_gptalk) as client:
        for _ in range(4):
            assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert fake_gptalk.spent_rejections == 1
    assert fake_gptalk.logins == 2
    assert fake_gptalk.submits == 4


async def test_concurrent_requests_share_logins(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.login_delay = 0.02
    async with client_for(fake_gptalk) as client:
        answers = await asyncio.gather(*(client.complete(MESSAGES) for _ in range(50)))
    assert answers == [DEFAULT_ANSWER] * 50
    assert fake_gptalk.logins == 10
    assert fake_gptalk.submits == 50
    assert max(fake_gptalk.token_uses.values()) <= 5
    assert fake_gptalk.spent_rejections == 0
    assert fake_gptalk.unauthorized == 0


# ---------------------------------------------------------------------------- 4. errors


@pytest.mark.parametrize("endpoint", ["login", "submit", "stream"])
@pytest.mark.parametrize("status", [500, 503])
async def test_http_error_status(fake_gptalk: FakeGPTalk, endpoint: Any, status: int) -> None:
    fake_gptalk.fail(endpoint, status=status)
    async with client_for(fake_gptalk) as client:
        deltas, exc = await expect_error(client, APIStatusError)
        assert exc.status == status
        assert exc.endpoint == endpoint
        assert deltas == []
        # The failure is not sticky: the next request works.
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_token_once_relogs_in(fake_gptalk: FakeGPTalk, status: int) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        await client.complete(MESSAGES)
        fake_gptalk.fail("submit", status=status)
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert fake_gptalk.logins == 2
    assert holder._auth is not None
    assert holder._auth["token"] == fake_gptalk.issued_tokens()[1]
    assert holder.used_times == 1
    assert fake_gptalk.requests_to("submit")[-1].headers["authorization"] == (
        f"Bearer {fake_gptalk.issued_tokens()[1]}"
    )


async def test_401_on_first_submit_relogs_in(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("submit", status=401)
    async with client_for(fake_gptalk) as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert fake_gptalk.logins == 2


async def test_401_twice_raises_authentication_error(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("submit", status=401, times=2)
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, AuthenticationError)
    assert exc.status == 401
    assert exc.endpoint == "submit"
    assert isinstance(exc, APIStatusError)
    assert fake_gptalk.logins == 2
    assert len(fake_gptalk.requests_to("submit")) == 2


async def test_login_refused_raises_authentication_error(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("login", status=403)
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, AuthenticationError)
    assert (exc.status, exc.endpoint) == (403, "login")


async def test_submit_without_data_once_relogs_in(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("submit", no_data=True)
    async with client_for(fake_gptalk) as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER
    assert fake_gptalk.logins == 2
    assert fake_gptalk.submits == 1


async def test_submit_without_data_twice_raises_protocol_error(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("submit", no_data=True, times=2)
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, ProtocolError)
    assert exc.endpoint == "submit"
    assert "quota exhausted" in exc.excerpt
    assert fake_gptalk.logins == 2


async def test_login_without_data_raises_protocol_error(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("login", no_data=True)
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, ProtocolError)
    assert exc.endpoint == "login"
    assert fake_gptalk.requests_to("submit") == []


@pytest.mark.parametrize(
    "expires_at",
    ['"soon"', "Infinity", "-Infinity", "NaN", "1e400", "true", "null"],
)
async def test_odd_login_expiry_raises_protocol_error(
    fake_gptalk: FakeGPTalk, expires_at: str
) -> None:
    # Python's json turns Infinity, NaN and 1e400 into floats int() cannot convert.
    fake_gptalk.fail("login", body=f'{{"data": {{"token": "t0k", "expires_at": {expires_at}}}}}')
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, ProtocolError)
    assert exc.endpoint == "login"
    assert "t0k" not in str(exc)
    assert "t0k" not in exc.excerpt
    assert fake_gptalk.requests_to("submit") == []
    async with client_for(fake_gptalk) as client:  # the next request logs in normally
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER


@pytest.mark.parametrize("endpoint", ["login", "submit", "stream"])
async def test_stall_raises_timeout(fake_gptalk: FakeGPTalk, endpoint: Any) -> None:
    fake_gptalk.fail(endpoint, stall=STALL)
    started = time.monotonic()
    async with client_for(fake_gptalk, read_timeout=READ_TIMEOUT) as client:
        deltas, exc = await expect_error(client, APITimeoutError)
    assert time.monotonic() - started < STALL
    assert exc.endpoint == endpoint
    assert isinstance(exc, APIConnectionError)
    assert deltas == []


async def test_stall_mid_stream_yields_then_times_out(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", stall=STALL, after=2)
    started = time.monotonic()
    async with client_for(fake_gptalk, read_timeout=READ_TIMEOUT) as client:
        deltas, exc = await expect_error(client, APITimeoutError)
    assert time.monotonic() - started < STALL
    assert exc.endpoint == "stream"
    assert "".join(deltas) == DEFAULT_ANSWER[:16]  # two lines of 8 characters


async def test_slow_stream_within_read_timeout_completes(fake_gptalk: FakeGPTalk) -> None:
    # read_timeout bounds each wait, not the whole answer (~20 lines x 0.05 s > 0.3 s).
    fake_gptalk.delay = 0.05
    async with client_for(fake_gptalk, read_timeout=READ_TIMEOUT) as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER


@pytest.mark.parametrize("fault", ["cut_after", "end_after"])
async def test_interrupted_stream(fake_gptalk: FakeGPTalk, fault: str) -> None:
    kwargs: dict[str, Any] = {fault: 2}
    fake_gptalk.fail("stream", **kwargs)
    deltas: list[str] = []
    async with client_for(fake_gptalk) as client:
        answer = client.stream(MESSAGES)
        try:
            async for delta in answer:
                deltas.append(delta)
        except GPTalkError as error:
            exc = error
        else:
            pytest.fail("the interrupted stream ended without an error")
        finally:
            await answer.aclose()
    assert type(exc) is StreamInterruptedError, repr(exc)
    assert "".join(deltas) == DEFAULT_ANSWER[:16]
    assert exc.received == "".join(deltas) == answer.text
    assert exc.endpoint == "stream"
    assert isinstance(exc, ProtocolError)


@pytest.mark.parametrize("fault", ["cut_after", "end_after"])
async def test_interrupted_stream_before_any_data(fake_gptalk: FakeGPTalk, fault: str) -> None:
    kwargs: dict[str, Any] = {fault: 0}
    fake_gptalk.fail("stream", **kwargs)
    async with client_for(fake_gptalk) as client:
        deltas, exc = await expect_error(client, StreamInterruptedError)
    assert deltas == []
    assert exc.received == ""


async def test_malformed_line_raises_protocol_error(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", malformed_after=1)
    async with client_for(fake_gptalk) as client:
        deltas, exc = await expect_error(client, ProtocolError)
    assert exc.endpoint == "stream"
    assert "data: {not json" in exc.excerpt
    assert "".join(deltas) == DEFAULT_ANSWER[:8]


async def test_malformed_line_text_stays_out_of_the_error_message(
    fake_gptalk: FakeGPTalk, caplog: pytest.LogCaptureFixture
) -> None:
    # A stream line may hold (part of) a private answer: it is kept on the exception for
    # debugging, but str(exc), what gets logged, does not show it.
    fake_gptalk.fail("stream", malformed_after=1)
    async with client_for(fake_gptalk) as client:
        _, exc = await expect_error(client, ProtocolError)
    logging.getLogger("test").error("answer failed", exc_info=exc)
    assert "not json" in exc.excerpt
    assert "not json" not in str(exc)
    assert "not json" not in repr(exc)
    assert "not json" not in caplog.text


async def test_connection_refused(fake_gptalk: FakeGPTalk) -> None:
    async with GPTalkClient(base_url=closed_port_url(), connect_timeout=2) as client:
        _, exc = await expect_error(client, APIConnectionError)
    assert exc.endpoint == "login"


async def test_unreachable_proxy_is_a_connection_error(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk, proxy=closed_port_url()) as client:
        _, exc = await expect_error(client, APIConnectionError)
    assert exc.endpoint == "login"
    assert fake_gptalk.requests == []  # everything went to the (dead) proxy


async def test_connection_refused_on_stream(fake_gptalk: FakeGPTalk) -> None:
    async with client_for(fake_gptalk) as client:
        redirect_stream_to(fake_gptalk, client, closed_port_url())
        _, exc = await expect_error(client, APIConnectionError)
    assert exc.endpoint == "stream"
    assert fake_gptalk.submits == 1


async def test_connect_timeout_on_stream(fake_gptalk: FakeGPTalk) -> None:
    with blackhole_url() as url:
        async with client_for(fake_gptalk, connect_timeout=READ_TIMEOUT) as client:
            redirect_stream_to(fake_gptalk, client, url)
            _, exc = await expect_error(client, APITimeoutError)
    assert exc.endpoint == "stream"


async def test_failed_submit_still_spends_its_use(fake_gptalk: FakeGPTalk) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        fake_gptalk.fail("submit", status=500)
        await expect_error(client, APIStatusError)
        assert holder.used_times == 1
        assert fake_gptalk.submits == 0  # the service never counted it
        for expected in (2, 3, 4, 5):
            await client.complete(MESSAGES)
            assert holder.used_times == expected
        assert fake_gptalk.logins == 1
        await client.complete(MESSAGES)  # 1 failed + 4 ok = 5 uses: this one logs in
        assert fake_gptalk.logins == 2
        assert holder.used_times == 1


async def test_failed_stream_still_spends_its_use(fake_gptalk: FakeGPTalk) -> None:
    holder = Holder()
    async with client_for(fake_gptalk, token_store=MemoryTokenStore(holder)) as client:
        fake_gptalk.fail("stream", status=500)
        await expect_error(client, APIStatusError)
    assert holder.used_times == 1


# ---------------------------------------------------------------------------- 5. no token leaks

Setup = Callable[[FakeGPTalk, GPTalkClient], None]


def _fault(endpoint: Any, times: int = 1, **kwargs: Any) -> Setup:
    def setup(fake: FakeGPTalk, client: GPTalkClient) -> None:
        fake.fail(endpoint, times=times, **kwargs)

    return setup


def _refused(fake: FakeGPTalk, client: GPTalkClient) -> None:
    client.base_url = closed_port_url()


def _stream_refused(fake: FakeGPTalk, client: GPTalkClient) -> None:
    redirect_stream_to(fake, client, closed_port_url())


def _nothing(fake: FakeGPTalk, client: GPTalkClient) -> None:
    pass


LEAK_SCENARIOS: dict[str, tuple[Setup, type[BaseException] | None]] = {
    "normal": (_nothing, None),
    "login-500": (_fault("login", status=500), APIStatusError),
    "login-403": (_fault("login", status=403), AuthenticationError),
    "login-no-data": (_fault("login", no_data=True), ProtocolError),
    "login-stall": (_fault("login", stall=STALL), APITimeoutError),
    "submit-503": (_fault("submit", status=503), APIStatusError),
    "submit-401-once": (_fault("submit", status=401), None),
    "submit-401-twice": (_fault("submit", times=2, status=401), AuthenticationError),
    "submit-no-data-once": (_fault("submit", no_data=True), None),
    "submit-no-data-twice": (_fault("submit", times=2, no_data=True), ProtocolError),
    "submit-stall": (_fault("submit", stall=STALL), APITimeoutError),
    "stream-500": (_fault("stream", status=500), APIStatusError),
    "stream-stall": (_fault("stream", stall=STALL), APITimeoutError),
    "stream-stall-mid": (_fault("stream", stall=STALL, after=2), APITimeoutError),
    "stream-cut": (_fault("stream", cut_after=2), StreamInterruptedError),
    "stream-end": (_fault("stream", end_after=2), StreamInterruptedError),
    "stream-malformed": (_fault("stream", malformed_after=1), ProtocolError),
    "refused": (_refused, APIConnectionError),
    "stream-refused": (_stream_refused, APIConnectionError),
}


@pytest.mark.parametrize("scenario", list(LEAK_SCENARIOS))
async def test_no_token_in_errors_or_logs(
    fake_gptalk: FakeGPTalk, caplog: pytest.LogCaptureFixture, scenario: str
) -> None:
    caplog.set_level(logging.DEBUG)
    setup, expected = LEAK_SCENARIOS[scenario]
    # max_uses=1: every request logs in, so bearer tokens are in play at every step.
    async with client_for(fake_gptalk, read_timeout=READ_TIMEOUT, max_uses=1) as client:
        assert await client.complete(MESSAGES) == DEFAULT_ANSWER  # tokens exist beforehand
        setup(fake_gptalk, client)
        deltas, exc = await consume(client)
    if expected is None:
        assert exc is None, repr(exc)
        assert "".join(deltas) == DEFAULT_ANSWER
    else:
        assert type(exc) is expected, repr(exc)
    assert_no_token(fake_gptalk, exc, caplog)


async def test_no_stream_token_in_stream_connect_timeout(
    fake_gptalk: FakeGPTalk, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp's connect-timeout message holds the request URL, i.e. ?token=<stream token>.
    caplog.set_level(logging.DEBUG)
    with blackhole_url() as url:
        async with client_for(fake_gptalk, connect_timeout=READ_TIMEOUT) as client:
            redirect_stream_to(fake_gptalk, client, url)
            _, exc = await expect_error(client, APITimeoutError)
    assert fake_gptalk.issued_stream_tokens()
    assert_no_token(fake_gptalk, exc, caplog)


async def test_no_token_in_logs_of_many_requests(
    fake_gptalk: FakeGPTalk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(fake_gptalk) as client:
        await asyncio.gather(*(client.complete(MESSAGES) for _ in range(12)))
        assert repr(await client.token_store.status())
    assert fake_gptalk.logins == 3
    assert_no_token(fake_gptalk, None, caplog)


# ---------------------------------------------------------------------------- 6. seed API


@pytest.fixture
def seed(fake_gptalk: FakeGPTalk, monkeypatch: pytest.MonkeyPatch) -> FakeGPTalk:
    """``GPTalk`` pointed at the fake, with fresh class-level auth state."""
    monkeypatch.setattr(GPTalk, "url", fake_gptalk.url)
    monkeypatch.setattr(GPTalk, "_auth", None)
    monkeypatch.setattr(GPTalk, "used_times", 0)
    return fake_gptalk


async def seed_answer(model: str = "", messages: Messages = MESSAGES, **kwargs: Any) -> str:
    parts = [p async for p in GPTalk.create_async_generator(model, messages, **kwargs)]
    assert all(isinstance(p, str) for p in parts)
    return "".join(parts)


def test_seed_class_attributes() -> None:
    assert GPTalk.working is True
    assert GPTalk.supports_gpt_35_turbo is True
    assert GPTalk.url == "https://gptalk.net"
    assert hasattr(GPTalk, "_auth")
    assert hasattr(GPTalk, "used_times")


async def test_seed_yields_the_answer(seed: FakeGPTalk) -> None:
    parts = [p async for p in GPTalk.create_async_generator("", MESSAGES)]
    assert "".join(parts) == DEFAULT_ANSWER
    assert len(parts) > 1
    [submit] = seed.requests_to("submit")
    assert body(submit)["model"] == "gpt-3.5-turbo"
    assert submit.headers["origin"] == seed.url


async def test_seed_passes_the_model(seed: FakeGPTalk) -> None:
    assert await seed_answer("gpt-4") == DEFAULT_ANSWER
    assert body(seed.requests_to("submit")[0])["model"] == "gpt-4"


async def test_seed_auth_and_used_times(seed: FakeGPTalk) -> None:
    assert GPTalk._auth is None
    await seed_answer()
    assert GPTalk._auth is not None
    assert GPTalk._auth["token"] == seed.issued_tokens()[0]
    assert GPTalk._auth["fingerprint"] == body(seed.requests_to("login")[0])["fingerprint"]
    assert isinstance(GPTalk._auth["expires_at"], int)
    assert GPTalk.used_times == 1
    for expected in (2, 3, 4, 5):
        await seed_answer()
        assert GPTalk.used_times == expected
    assert seed.logins == 1
    await seed_answer()
    assert seed.logins == 2
    assert GPTalk.used_times == 1
    assert GPTalk._auth["token"] == seed.issued_tokens()[1]
    assert seed.spent_rejections == 0


async def test_seed_clearing_auth_forces_login(seed: FakeGPTalk) -> None:
    await seed_answer()
    await seed_answer()
    assert seed.logins == 1
    GPTalk._auth = None
    await seed_answer()
    assert seed.logins == 2
    assert GPTalk.used_times == 1


async def test_seed_url_is_read_at_call_time(seed: FakeGPTalk) -> None:
    async with FakeGPTalk(answer="second server") as other:
        GPTalk.url = other.url
        assert await seed_answer() == "second server"
    assert seed.requests == []
    assert other.logins == 1


async def test_seed_kwargs(seed: FakeGPTalk) -> None:
    assert await seed_answer(temperature=1, ctx_msg_count=5) == DEFAULT_ANSWER
    assert await seed_answer(stream=True, foo="bar", timeout=3) == DEFAULT_ANSWER
    first, second = (body(r) for r in seed.requests_to("submit"))
    assert (first["temperature"], first["ctx_msg_count"]) == (1, 5)
    assert second["temperature"] == 0
    assert set(first) == set(second) == SUBMIT_KEYS


async def test_seed_errors_are_typed(seed: FakeGPTalk) -> None:
    seed.fail("submit", no_data=True, times=2)
    with pytest.raises(ProtocolError) as info:
        await seed_answer()
    assert info.value.endpoint == "submit"


EXAMPLE = """
async def main():
    messages = [{"role": "user", "content": "Write a short poem about autumn."}]
    async for message in GPTalk.create_async_generator(model="gpt-3.5-turbo", messages=messages):
        print(message, end="")
asyncio.run(main())
"""


async def test_seed_example_runs_as_written(seed: FakeGPTalk) -> None:
    script = f"import asyncio\nfrom gptalk import GPTalk\nGPTalk.url = {seed.url!r}\n" + EXAMPLE
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    assert stdout.decode("utf-8") == DEFAULT_ANSWER
    assert seed.logins == 1
    assert seed.prompts == ["Write a short poem about autumn."]
    assert body(seed.requests_to("submit")[0])["model"] == "gpt-3.5-turbo"


async def test_keep_alive_comments_do_not_hide_a_stall() -> None:
    """A stream that sends only ``: keep-alive`` lines after its first data line is
    stalled: the read timeout counts from the last data line, not the last byte."""
    from aiohttp import web

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"data": {"token": "t", "expires_at": 2**40}})

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"data": {"token": "s"}})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"content": "Hello"}\n\n')
        for _ in range(40):  # 4 s of keep-alives, no data
            await asyncio.sleep(0.1)
            await response.write(b": keep-alive\n\n")
        return response

    app = web.Application()
    app.router.add_post("/api/chatgpt/user/login", login)
    app.router.add_post("/api/chatgpt/chatapi/text", submit)
    app.router.add_get("/api/chatgpt/chatapi/stream", stream)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with GPTalkClient(base_url=f"http://127.0.0.1:{port}", read_timeout=0.5) as client:
            answer = client.stream(MESSAGES)
            started = time.monotonic()
            assert await anext(answer) == "Hello"
            with pytest.raises(APITimeoutError):
                await anext(answer)
            assert time.monotonic() - started < 2.0
    finally:
        await runner.cleanup()
