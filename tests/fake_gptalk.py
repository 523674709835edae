"""An in-process fake of the GPTalk HTTP API (spec Part 2), built on ``aiohttp.web``.

It speaks the wire protocol like the real service (login -> bearer token, submit -> one-time
stream token, stream -> cumulative ``data:`` lines ending with ``data: [DONE]``), records
every request, counts what happened, and lets tests inject faults per endpoint with
:meth:`FakeGPTalk.fail`.

Run it by hand for manual trials::

    python -m tests.fake_gptalk --port 8081 --delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "DEFAULT_ANSWER",
    "LOGIN_PATH",
    "STREAM_PATH",
    "SUBMIT_KEYS",
    "SUBMIT_PATH",
    "Endpoint",
    "FakeGPTalk",
    "Fault",
    "RecordedRequest",
]

LOGIN_PATH = "/api/chatgpt/user/login"
SUBMIT_PATH = "/api/chatgpt/chatapi/text"
STREAM_PATH = "/api/chatgpt/chatapi/stream"

SUBMIT_KEYS = frozenset(
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

DEFAULT_ANSWER = (
    "**Autumn Whispers** 🍂\n"
    "\n"
    "Golden leaves drift slowly down,\n"
    "Painting paths in red and brown;\n"
    "Cool winds hum a quiet tune,\n"
    "Beneath a pale October moon.\n"
)

Endpoint = Literal["login", "submit", "stream"]

_PATHS: dict[str, str] = {"login": LOGIN_PATH, "submit": SUBMIT_PATH, "stream": STREAM_PATH}
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{32}")
_KEEPALIVE = b": keep-alive\n\n"
_MALFORMED = b"data: {not json\n\n"
_DONE = b"data: [DONE]\n\n"


@dataclass
class RecordedRequest:
    """One request as the fake saw it (faulted ones included)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased header names
    query: dict[str, str]
    json: Any | None  # parsed JSON body, or None when absent / not JSON
    at: float = 0.0  # time.monotonic() when it arrived


@dataclass
class Fault:
    """A fault to inject into one request of an endpoint (see :meth:`FakeGPTalk.fail`).

    Stream faults whose line count is at or beyond the number of content lines fire just
    before ``data: [DONE]`` (so ``cut_after``/``end_after`` never let ``[DONE]`` through).
    """

    status: int | None = None  # answer this HTTP status instead of the normal answer
    no_data: bool = False  # login/submit: HTTP 200 JSON without "data" (like a spent token)
    body: str | None = None  # login/submit: HTTP 200 with this raw body (e.g. odd JSON)
    stall: float = 0.0  # sleep this long before answering (stream: before data line `after`)
    cut_after: int | None = None  # stream: abort the TCP connection after N data lines
    end_after: int | None = None  # stream: end cleanly (chunked terminator) after N, no [DONE]
    malformed_after: int | None = None  # stream: after N good lines send `malformed_line`
    malformed_line: bytes = _MALFORMED
    after: int = 0  # stream, with stall: how many data lines go out before the stall


@dataclass
class _StreamTicket:
    text: str


@dataclass
class _Queues:
    login: deque[Fault] = field(default_factory=deque)
    submit: deque[Fault] = field(default_factory=deque)
    stream: deque[Fault] = field(default_factory=deque)

    def get(self, endpoint: str) -> deque[Fault]:
        queue: deque[Fault] = getattr(self, endpoint)
        return queue


class FakeGPTalk:
    """A fake GPTalk service. ``await start()`` it, point the client at :attr:`url`."""

    def __init__(
        self,
        *,
        answer: str = DEFAULT_ANSWER,
        reply: Callable[[str], str] | None = None,
        chunk_size: int = 8,
        delay: float = 0.0,
        token_lifetime: int = 3600,
        max_uses: int = 5,
        login_delay: float = 0.0,
    ) -> None:
        # settings (plain attributes; tests may change them between requests)
        self.answer = answer
        self.reply = reply
        self.chunk_size = chunk_size
        self.delay = delay
        self.token_lifetime = token_lifetime
        self.max_uses = max_uses
        self.login_delay = login_delay
        self.hold: asyncio.Event | None = None
        """When set to an Event: every stream waits for it before its first data line."""
        # server state
        self._faults = _Queues()
        self._tokens: dict[str, int] = {}  # bearer token -> expires_at
        self._issued: list[str] = []
        self._issued_stream: list[str] = []
        self._streams_pending: dict[str, _StreamTicket] = {}
        self.token_uses: dict[str, int] = {}
        # counters / records
        self.logins = 0
        self.submits = 0
        self.streams = 0
        self.spent_rejections = 0
        self.unauthorized = 0
        self.requests: list[RecordedRequest] = []
        self.prompts: list[str] = []
        # serving
        self.url = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ test helpers

    def fail(
        self,
        endpoint: Endpoint,
        fault: Fault | None = None,
        *,
        times: int = 1,
        **kw: Any,
    ) -> None:
        """Queue ``times`` copies of ``fault`` (or ``Fault(**kw)``) for ``endpoint``.

        Each request to the endpoint pops one queued fault before normal processing.
        """
        if endpoint not in _PATHS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected login, submit or stream")
        if fault is not None and kw:
            raise TypeError("pass either a Fault or keyword arguments, not both")
        template = fault if fault is not None else Fault(**kw)
        queue = self._faults.get(endpoint)
        for _ in range(times):
            queue.append(Fault(**vars(template)))

    def pending_faults(self, endpoint: Endpoint) -> int:
        """How many queued faults have not fired yet for ``endpoint``."""
        return len(self._faults.get(endpoint))

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """Recorded requests to ``endpoint`` ("login", "submit" or "stream")."""
        path = _PATHS.get(endpoint, endpoint)
        return [r for r in self.requests if r.path == path]

    def issued_tokens(self) -> list[str]:
        """Bearer tokens issued by login, in order."""
        return list(self._issued)

    def issued_stream_tokens(self) -> list[str]:
        """Stream tokens issued by submit, in order."""
        return list(self._issued_stream)

    def reset_counters(self) -> None:
        """Zero the counters and clear ``requests``/``prompts``.

        Server state is kept: issued tokens stay valid, ``token_uses`` keeps counting toward
        ``max_uses``, pending stream tokens and queued faults stay.
        """
        self.logins = 0
        self.submits = 0
        self.streams = 0
        self.spent_rejections = 0
        self.unauthorized = 0
        self.requests.clear()
        self.prompts.clear()

    # ------------------------------------------------------------------ serving

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(LOGIN_PATH, self._login)
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get(STREAM_PATH, self._stream)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = a free port); return and remember the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeGPTalk already started")
        runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handler_cancellation=True,  # a client that goes away cancels a stalled handler
            shutdown_timeout=0.25,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeGPTalk:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ handlers

    async def _record(self, request: web.Request) -> Any | None:
        body = await request.read()
        parsed: Any | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                query=dict(request.query),
                json=parsed,
                at=time.monotonic(),
            )
        )
        return parsed

    def _pop_fault(self, endpoint: str) -> Fault | None:
        queue = self._faults.get(endpoint)
        return queue.popleft() if queue else None

    @staticmethod
    def _status_response(status: int) -> web.Response:
        return web.json_response({"code": status, "message": "injected"}, status=status)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"code": status, "message": message}, status=status)

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        fault = self._pop_fault("login")
        if fault is not None:
            if fault.stall > 0:
                await asyncio.sleep(fault.stall)
            if fault.status is not None:
                return self._status_response(fault.status)
            if fault.no_data:
                return web.json_response({"code": 10002, "message": "login refused"})
            if fault.body is not None:
                return web.Response(text=fault.body, content_type="application/json")
        if self.login_delay > 0:
            await asyncio.sleep(self.login_delay)
        if (
            not isinstance(body, dict)
            or set(body) != {"fingerprint", "platform"}
            or body["platform"] != "fingerprint"
            or not isinstance(body["fingerprint"], str)
            or not _FINGERPRINT_RE.fullmatch(body["fingerprint"])
        ):
            return self._error(
                400, 'expected {"fingerprint": <32 lowercase hex>, "platform": "fingerprint"}'
            )
        token = secrets.token_urlsafe(24)
        expires_at = int(time.time()) + self.token_lifetime
        self._tokens[token] = expires_at
        self.token_uses[token] = 0
        self._issued.append(token)
        self.logins += 1
        return web.json_response(
            {
                "data": {
                    "token": token,
                    "expires_at": expires_at,
                    "user_id": 100000 + self.logins,
                    "fingerprint": body["fingerprint"],
                }
            }
        )

    async def _submit(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        fault = self._pop_fault("submit")
        if fault is not None:
            if fault.stall > 0:
                await asyncio.sleep(fault.stall)
            if fault.status is not None:
                return self._status_response(fault.status)
            if fault.no_data:
                return web.json_response({"code": 10001, "message": "quota exhausted"})
            if fault.body is not None:
                return web.Response(text=fault.body, content_type="application/json")
        # everything below runs without awaiting: the use count cannot race
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        expires_at = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expires_at is None or expires_at < int(time.time()):
            self.unauthorized += 1
            return self._error(401, "unauthorized")
        if self.token_uses.get(token, 0) >= self.max_uses:
            self.spent_rejections += 1
            return web.json_response({"code": 10001, "message": "quota exhausted"})
        if not isinstance(body, dict):
            return self._error(400, "expected a JSON object")
        missing = SUBMIT_KEYS - body.keys()
        extra = body.keys() - SUBMIT_KEYS
        if missing or extra:
            return self._error(
                400, f"bad submit body: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        content = body["content"]
        if not isinstance(content, str):
            return self._error(400, "content must be a string")
        self.token_uses[token] = self.token_uses.get(token, 0) + 1
        self.submits += 1
        self.prompts.append(content)
        text = self.reply(content) if self.reply is not None else self.answer
        stream_token = secrets.token_urlsafe(24)
        self._streams_pending[stream_token] = _StreamTicket(text)
        self._issued_stream.append(stream_token)
        return web.json_response({"data": {"token": stream_token}})

    def _lines(self, text: str) -> list[bytes]:
        if not text:
            return []
        step = self.chunk_size if self.chunk_size > 0 else len(text)
        ends = [*range(step, len(text), step), len(text)]
        return [
            b"data: "
            + json.dumps({"content": text[:end]}, ensure_ascii=False).encode("utf-8")
            + b"\n\n"
            for end in ends
        ]

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        fault = self._pop_fault("stream")
        if fault is not None and fault.status is not None:
            self.streams += 1
            if fault.stall > 0:
                await asyncio.sleep(fault.stall)
            return self._status_response(fault.status)
        ticket = self._streams_pending.pop(request.query.get("token", ""), None)
        if ticket is None:
            return self._error(404, "stream not found")
        self.streams += 1
        fault = fault or Fault()
        lines = self._lines(ticket.text)

        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            await resp.write(_KEEPALIVE)
            if self.hold is not None:  # a test decides when the first chunk goes out
                await self.hold.wait()
            # sent = data lines written so far; faults fire when `sent` reaches their count
            for sent in range(len(lines) + 1):
                last = sent == len(lines)
                if fault.stall > 0 and (fault.after == sent or (last and fault.after > sent)):
                    await asyncio.sleep(fault.stall)
                if fault.malformed_after is not None and (
                    fault.malformed_after == sent or (last and fault.malformed_after > sent)
                ):
                    await resp.write(fault.malformed_line)
                if fault.cut_after is not None and (fault.cut_after <= sent or last):
                    self._cut(request)
                    return resp
                if fault.end_after is not None and (fault.end_after <= sent or last):
                    await resp.write_eof()
                    return resp
                if last:
                    break
                if sent > 0 and self.delay > 0:
                    await asyncio.sleep(self.delay)
                await resp.write(lines[sent])
            await resp.write(_DONE)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        return resp

    @staticmethod
    def _cut(request: web.Request) -> None:
        """Drop the connection mid-body: the chunked terminator and [DONE] never arrive."""
        transport = request.transport
        if transport is not None:
            # close(), not abort(): flush the lines already written, then FIN.
            transport.close()


# ---------------------------------------------------------------------- manual runs


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_gptalk", description="Serve a fake GPTalk API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--answer", default=DEFAULT_ANSWER)
    parser.add_argument("--max-uses", type=int, default=5)
    parser.add_argument("--token-lifetime", type=int, default=3600)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGPTalk(
        answer=args.answer,
        chunk_size=args.chunk_size,
        delay=args.delay,
        max_uses=args.max_uses,
        token_lifetime=args.token_lifetime,
    )
    url = await fake.start(args.host, args.port)
    print(f"fake GPTalk listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
