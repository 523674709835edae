"""The GPTalk client: login, submit, stream — the whole wire protocol in one place."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeGuard

import aiohttp

from ._stream import DONE, LineSplitter, StreamDecoder, parse_data_line
from .auth import LoginResult, MemoryTokenStore, RedisTokenStore, TokenStore
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    Endpoint,
    GPTalkError,
    ProtocolError,
    StreamInterruptedError,
    excerpt,
)
from .prompt import Messages, format_prompt
from .urls import url_secrets, without_userinfo

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "SUBMIT_FIELDS",
    "AnswerStream",
    "GPTalkClient",
    "build_headers",
    "build_submit_body",
]

log = logging.getLogger("gptalk")

DEFAULT_BASE_URL: Final = "https://gptalk.net"
DEFAULT_MODEL: Final = "gpt-3.5-turbo"
DEFAULT_MAX_USES: Final = 5

LOGIN_PATH: Final = "/api/chatgpt/user/login"
SUBMIT_PATH: Final = "/api/chatgpt/chatapi/text"
STREAM_PATH: Final = "/api/chatgpt/chatapi/stream"

USER_AGENT: Final = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/117.0.0.0 Safari/537.36"
)
SEC_CH_UA: Final = '"Google Chrome";v="117", "Not;A=Brand";v="8", "Chromium";v="117"'

SUBMIT_FIELDS: Final = frozenset(
    {
        "content",
        "accept",
        "from",
        "model",
        "is_mobile",
        "user_agent",
        "is_open_ctx",
        "prompt",
        "roid",
        "temperature",
        "ctx_msg_count",
        "created_at",
    }
)
"""Keys of the submit body; :meth:`GPTalkClient.stream` accepts overrides for them."""


def build_headers(base_url: str, timestamp: int) -> dict[str, str]:
    """Headers sent with every request, as the GPTalk web app sends them."""
    return {
        "accept": "*/*",
        "content-type": "application/json",
        "origin": base_url,
        "sec-ch-ua": SEC_CH_UA,
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Linux"',
        "sec-fetch-dest": "empty",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "same-origin",
        "user-agent": USER_AGENT,
        "x-auth-appid": "2229",
        "x-auth-openid": "",
        "x-auth-platform": "",
        "x-auth-timestamp": str(timestamp),
    }


def build_submit_body(
    messages: Messages,
    model: str,
    timestamp: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body that starts a generation."""
    body: dict[str, Any] = {
        "content": format_prompt(messages),
        "accept": "stream",
        "from": 1,
        "model": model,
        "is_mobile": 0,
        "user_agent": USER_AGENT,
        "is_open_ctx": 0,
        "prompt": "",
        "roid": 111,
        "temperature": 0,
        "ctx_msg_count": 3,
        "created_at": timestamp,
    }
    if overrides:
        unknown = set(overrides) - SUBMIT_FIELDS
        if unknown:
            raise ValueError(f"not a submit-body field: {', '.join(sorted(unknown))}")
        body.update(overrides)
    return body


_TOKEN_FIELD = re.compile(r'("token"\s*:\s*")[^"]*(")')
_TOKEN_QUERY = re.compile(r"(token=)[^&\s'\"]+")


def _redact(text: str, *secrets_: str) -> str:
    """Remove tokens and URL credentials from text that goes into an exception or a
    log line."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "***")
    return without_userinfo(_TOKEN_QUERY.sub(r"\1***", _TOKEN_FIELD.sub(r"\1***\2", text)))


class _TokenRejected(Exception):
    """Internal: the service refused the bearer token; ``error`` is raised if a
    fresh login does not help."""

    def __init__(self, error: GPTalkError) -> None:
        super().__init__(error.message)
        self.error = error


class AnswerStream(AsyncIterator[str]):
    """The answer as an async iterator of text deltas.

    Iterate it with ``async for``; leave early with :meth:`aclose` (or use it as an
    async context manager) to release the HTTP connection at once. ``text`` holds
    everything received so far.
    """

    def __init__(self, deltas: AsyncGenerator[str, None]) -> None:
        self._deltas = deltas
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        delta = await self._deltas.__anext__()
        self._parts.append(delta)
        return delta

    async def aclose(self) -> None:
        await self._deltas.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class GPTalkClient:
    """An async GPTalk client that owns one HTTP session.

    ::

        async with GPTalkClient() as client:
            async for delta in client.stream([{"role": "user", "content": "Hi"}]):
                print(delta, end="")

    ``read_timeout`` bounds the wait for *each* piece of data (a stalled answer
    fails), never the whole answer, which may take minutes. ``token_store`` decides
    where the bearer token lives: in memory (default) or in Redis, shared by every
    process (:class:`~gptalk.auth.RedisTokenStore`). ``max_connections`` sizes the
    connection pool: every streaming answer holds one connection. ``on_login``,
    if given, is awaited after every successful login (e.g. to count them).
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        proxy: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_uses: int = DEFAULT_MAX_USES,
        token_store: TokenStore | None = None,
        max_connections: int = 1000,
        on_login: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model or DEFAULT_MODEL
        self.proxy = proxy or None
        self.max_uses = max_uses
        self.token_store: TokenStore = (
            token_store if token_store is not None else MemoryTokenStore()
        )
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        if (
            isinstance(token_store, RedisTokenStore)
            and token_store.login_timeout < connect_timeout + read_timeout
        ):
            log.warning(
                "the Redis token store was built for shorter GPTalk timeouts: it cuts logins "
                "off after %g s (pass connect_timeout/read_timeout to RedisTokenStore)",
                token_store.login_timeout,
            )
        self._max_connections = max_connections
        self._on_login = on_login
        self._session: aiohttp.ClientSession | None = None
        # Login and submit answer with a few bytes, so they get a total bound too
        # (the Redis login lock outlives connect + read timeout); the stream gets none.
        self._request_timeout = aiohttp.ClientTimeout(
            total=connect_timeout + read_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session. The token store is not closed: it may be shared."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _url_secrets(self) -> list[str]:
        # aiohttp quotes the proxy's URL, password and all, when the proxy refuses.
        return url_secrets(self.base_url) + url_secrets(self.proxy or "")

    def stream(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> AnswerStream:
        """Stream the answer to ``messages`` as text deltas.

        ``options`` overrides fields of the submit body (e.g. ``{"temperature": 1}``;
        see :data:`SUBMIT_FIELDS`). Raises :class:`~gptalk.errors.GPTalkError`
        subclasses; a stream cut before its end raises
        :class:`~gptalk.errors.StreamInterruptedError` after yielding what arrived.
        """
        timestamp = int(time.time())
        body = build_submit_body(messages, model or self.model, timestamp, options)
        return AnswerStream(self._generate(body, build_headers(self.base_url, timestamp)))

    async def complete(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Return the whole answer to ``messages``."""
        async with self.stream(messages, model=model, options=options) as answer:
            return "".join([delta async for delta in answer])

    async def _generate(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncGenerator[str, None]:
        stream_token = await self._submit_with_login(body, headers)
        async for delta in self._read_stream(stream_token, headers):
            yield delta

    async def _submit_with_login(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        async def login() -> LoginResult:
            return await self._login(headers)

        for attempt in (1, 2):
            token = await self.token_store.acquire(login, max_uses=self.max_uses)
            try:
                return await self._submit(token, body, headers)
            except _TokenRejected as rejected:
                await self.token_store.invalidate(token)
                if attempt == 2:
                    raise rejected.error from None
                log.info("GPTalk rejected the token (%s); logging in again", rejected.error)
        raise AssertionError("unreachable")

    async def _login(self, headers: dict[str, str]) -> LoginResult:
        payload = {"fingerprint": secrets.token_hex(16), "platform": "fingerprint"}
        status, text = await self._post(LOGIN_PATH, payload, headers, "login")
        if status in (401, 403):
            raise AuthenticationError(
                f"GPTalk refused the login (HTTP {status})",
                status=status,
                body=excerpt(_redact(text)),
                endpoint="login",
            )
        self._check_status(status, text, "login")
        data = self._json_data(text, "login") or {}
        token, expires_at = data.get("token"), data.get("expires_at")
        if not isinstance(token, str) or not token or not _is_timestamp(expires_at):
            raise ProtocolError(
                "GPTalk login answer lacks data.token or data.expires_at",
                excerpt=excerpt(_redact(text)),
                endpoint="login",
            )
        log.info("logged in to GPTalk; token valid until %d", expires_at)
        if self._on_login is not None:
            await self._on_login()
        return LoginResult(token=token, expires_at=int(expires_at), data=data)

    async def _submit(self, token: str, body: dict[str, Any], headers: dict[str, str]) -> str:
        auth_headers = {**headers, "authorization": f"Bearer {token}"}
        status, text = await self._post(SUBMIT_PATH, body, auth_headers, "submit", token)
        if status in (401, 403):
            raise _TokenRejected(
                AuthenticationError(
                    f"GPTalk rejected the token (HTTP {status})",
                    status=status,
                    body=excerpt(_redact(text, token)),
                    endpoint="submit",
                )
            )
        self._check_status(status, text, "submit", token)
        data = self._json_data(text, "submit", token)
        if data is None:
            # What GPTalk answers once a token's quota is spent (HTTP 200, no data).
            raise _TokenRejected(
                ProtocolError(
                    "GPTalk answered without data (the token's quota is probably spent)",
                    excerpt=excerpt(_redact(text, token)),
                    endpoint="submit",
                )
            )
        stream_token = data.get("token")
        if not isinstance(stream_token, str) or not stream_token:
            raise ProtocolError(
                "GPTalk answered without a stream token",
                excerpt=excerpt(_redact(text, token)),
                endpoint="submit",
            )
        log.debug("GPTalk accepted the prompt (%d chars)", len(body["content"]))
        return stream_token

    async def _post(
        self,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        endpoint: Endpoint,
        *secrets_: str,
    ) -> tuple[int, str]:
        try:
            async with self._http().post(
                self.base_url + path,
                json=payload,
                headers=headers,
                proxy=self.proxy,
                timeout=self._request_timeout,
            ) as response:
                return response.status, await response.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = _transport_error(exc, endpoint, *secrets_, *self._url_secrets())
        raise error  # outside the except block: no implicit __context__ to leak from

    @staticmethod
    def _check_status(status: int, text: str, endpoint: Endpoint, *secrets_: str) -> None:
        if not 200 <= status < 300:
            raise APIStatusError(
                f"GPTalk {endpoint} failed with HTTP {status}",
                status=status,
                body=excerpt(_redact(text, *secrets_)),
                endpoint=endpoint,
            )

    @staticmethod
    def _json_data(text: str, endpoint: Endpoint, *secrets_: str) -> dict[str, Any] | None:
        """The ``data`` object of a JSON answer, or None when it has none."""
        try:
            document = json.loads(text)
        except ValueError:
            raise ProtocolError(
                f"GPTalk {endpoint} answer is not JSON",
                excerpt=excerpt(_redact(text, *secrets_)),
                endpoint=endpoint,
            ) from None
        data = document.get("data") if isinstance(document, dict) else None
        return data if isinstance(data, dict) else None

    async def _read_stream(
        self, stream_token: str, headers: dict[str, str]
    ) -> AsyncGenerator[str, None]:
        splitter, decoder = LineSplitter(), StreamDecoder()
        received: list[str] = []
        loop = asyncio.get_running_loop()
        try:
            async with self._http().get(
                self.base_url + STREAM_PATH,
                params={"token": stream_token},
                headers=headers,
                proxy=self.proxy,
                timeout=self._stream_timeout,
            ) as response:
                if response.status != 200:
                    text = await response.text(errors="replace")
                    self._check_status(response.status, text, "stream", stream_token)
                # The socket's read timeout restarts on any byte, keep-alive comments
                # included; a stream counts as stalled when no *data line* came.
                deadline = loop.time() + self.read_timeout
                while True:
                    async with asyncio.timeout_at(deadline):
                        chunk = await response.content.readany()
                    if not chunk:
                        break
                    for line in splitter.feed(chunk):
                        item = decoder.feed(line)
                        if item is DONE:
                            return
                        if isinstance(item, str):  # a data line, even one adding nothing
                            deadline = loop.time() + self.read_timeout
                            if item:
                                received.append(item)
                                yield item
                tail = splitter.flush()
                if tail is not None and parse_data_line(tail) is DONE:
                    return
        except aiohttp.ClientPayloadError:
            transport_error = None  # closed mid-body: the same as ending without [DONE]
        except (TimeoutError, aiohttp.ClientError) as exc:
            transport_error = _transport_error(exc, "stream", stream_token, *self._url_secrets())
        else:
            transport_error = None
        # Raised outside the except blocks: no implicit __context__ to leak a token from.
        raise transport_error or StreamInterruptedError(
            "the GPTalk stream ended before [DONE]", received="".join(received)
        )


def _is_timestamp(value: object) -> TypeGuard[int | float]:
    # JSON's Infinity, NaN and 1e400 parse to floats that int() cannot take; a bool
    # is an int to isinstance, but no timestamp.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _transport_error(
    exc: TimeoutError | aiohttp.ClientError, endpoint: Endpoint, *secrets_: str
) -> APIConnectionError:
    """A GPTalk error for a transport failure, whose text holds no token and no
    URL credentials."""
    original = str(exc) or type(exc).__name__
    detail = _redact(original, *secrets_)
    error: APIConnectionError
    if isinstance(exc, TimeoutError):
        error = APITimeoutError(f"GPTalk {endpoint} timed out ({detail})", endpoint=endpoint)
    else:
        error = APIConnectionError(f"GPTalk {endpoint} failed: {detail}", endpoint=endpoint)
    # The original stays attached for debugging unless its own text would show a
    # token (aiohttp puts request URLs, with the stream token, in some messages).
    error.__cause__ = exc if detail == original else None
    error.__suppress_context__ = True
    return error
