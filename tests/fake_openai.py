"""An in-process fake of an OpenAI-compatible chat-completions endpoint (``aiohttp.web``).

``POST /v1/chat/completions`` with ``stream: true`` answers Server-Sent Events as
OpenAI does: a first chunk with the role only, ``data:`` chunks whose
``choices[0].delta.content`` carry the answer piece by piece, a last chunk with the
``finish_reason``, then ``data: [DONE]``. A bearer key is checked (401 with OpenAI's
error body, which echoes the start of the key as the real service does). Tests
script failures per request with :meth:`FakeOpenAI.fail`, and may send ``: ping``
keep-alive comments while a stall lasts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_ANSWER", "FakeOpenAI", "OpenAIFault"]

DEFAULT_ANSWER = "Hello from the OpenAI-compatible fake."
_DONE = b"data: [DONE]\n\n"
_PING = b": ping\n\n"


@dataclass
class OpenAIFault:
    """What goes wrong with one request (see :meth:`FakeOpenAI.fail`)."""

    status: int | None = None  # answer this HTTP status with an OpenAI error body
    stall: float = 0.0  # seconds without data, sent after `after` content chunks
    after: int = 0
    pings: bool = True  # send `: ping` comments during the stall (they are no data)
    cut_after: int | None = None  # close the connection after N content chunks
    finish_reason: str | None = "stop"  # None: the last chunk names no finish_reason
    reasoning: int = 0  # reasoning-only chunks (no content) before the first content


@dataclass
class ChatRequest:
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages


class FakeOpenAI:
    """``await start()``, then point the client at :attr:`base_url` (``…/v1``)."""

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-key",
        answer: str = DEFAULT_ANSWER,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        chunk_size: int = 8,
        delay: float = 0.0,
        ping_interval: float = 0.1,
    ) -> None:
        self.api_key = api_key  # None: no key needed (like a local Ollama)
        self.answer = answer
        self.reply = reply
        self.chunk_size = chunk_size
        self.delay = delay
        self.ping_interval = ping_interval
        self.requests: list[ChatRequest] = []
        self.rejected_keys = 0
        self._faults: deque[OpenAIFault] = deque()
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def fail(self, fault: OpenAIFault | None = None, *, times: int = 1, **kw: Any) -> None:
        """Queue ``times`` copies of ``fault`` (or ``OpenAIFault(**kw)``): each request
        takes one, in order."""
        template = fault if fault is not None else OpenAIFault(**kw)
        for _ in range(times):
            self._faults.append(OpenAIFault(**vars(template)))

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ handler

    @staticmethod
    def _error(status: int, message: str, kind: str) -> web.Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "We could not parse the JSON body.", "invalid_request_error")
        self.requests.append(ChatRequest({k.lower(): v for k, v in request.headers.items()}, body))
        if self.api_key is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if given != self.api_key:
                self.rejected_keys += 1
                # OpenAI's message shows the start and end of the wrong key; this one
                # shows all of it, so that tests prove the bot keeps it out of its logs.
                shown = f"{given[:8]}…{given[-4:]}" if given else "(none)"
                return self._error(
                    401, f"Incorrect API key provided: {shown} ({given}).", "invalid_request_error"
                )
        fault = self._faults.popleft() if self._faults else OpenAIFault()
        if fault.status is not None:
            return self._error(fault.status, "injected failure", "server_error")
        if not body.get("stream"):
            return self._error(400, "this fake only streams", "invalid_request_error")

        messages = body["messages"]
        text = self.reply(messages) if self.reply is not None else self.answer
        step = self.chunk_size if self.chunk_size > 0 else max(len(text), 1)
        pieces = [text[i : i + step] for i in range(0, len(text), step)]
        model = body.get("model", "")
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            document = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(document, ensure_ascii=False).encode() + b"\n\n"

        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        try:
            await resp.prepare(request)
            await resp.write(chunk({"role": "assistant", "content": ""}))
            for _ in range(fault.reasoning):
                await resp.write(chunk({"reasoning_content": "thinking…"}))
            for sent in range(len(pieces) + 1):
                if fault.stall > 0 and fault.after == sent:
                    await self._stall(resp, fault)
                if fault.cut_after is not None and fault.cut_after == sent:
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                if sent == len(pieces):
                    break
                if sent > 0 and self.delay > 0:
                    await asyncio.sleep(self.delay)
                await resp.write(chunk({"content": pieces[sent]}))
            await resp.write(chunk({}, fault.finish_reason))
            await resp.write(_DONE)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        return resp

    async def _stall(self, resp: web.StreamResponse, fault: OpenAIFault) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + fault.stall
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(self.ping_interval, left))
            if fault.pings:
                await resp.write(_PING)
