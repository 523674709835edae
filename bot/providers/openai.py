"""Any OpenAI-compatible chat-completions endpoint as a provider (OpenAI, OpenRouter,
Ollama's ``/v1``, vLLM), through the official ``openai`` package.

The SDK retries nothing here (``max_retries=0``): trying another provider is the
fallback's decision. Its errors become the bot's provider errors at this boundary,
with the API key and the base URL's credentials taken out of every message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gptalk import Message
from gptalk.urls import url_secrets, without_userinfo

from .base import (
    ProviderAuthError,
    ProviderCutOff,
    ProviderError,
    ProviderTimeout,
    ProviderTruncated,
    ProviderUnavailable,
    ProviderUnreadable,
)

__all__ = ["DEFAULT_BASE_URL", "OpenAIProvider"]

log = logging.getLogger(__name__)

NAME: Final = "openai"
DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
EXCERPT_LIMIT: Final = 200
TRUNCATING: Final = frozenset({"length", "content_filter"})


class OpenAIProvider:
    """Streams chat completions. ``read_timeout`` bounds the wait for each next
    chunk, not the whole answer: SSE keep-alive comments never reach this code, so
    a server that only pings still counts as stalled."""

    name = NAME

    def __init__(
        self,
        *,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        service: str = "the model service",
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.read_timeout = read_timeout
        # The key, and whatever credentials the base URL carries (a gateway's user and
        # password), are taken out of every message.
        self._secrets = [api_key, *url_secrets(base_url)]
        self._service = service
        self._options: dict[str, Any] = {}
        if temperature is not None:
            self._options["temperature"] = temperature
        if max_tokens is not None:
            self._options["max_tokens"] = max_tokens
        self._client = AsyncOpenAI(
            # The SDK insists on a key; local servers (Ollama, vLLM) ignore this one.
            api_key=api_key or "unused",
            base_url=base_url,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
            max_retries=0,
        )

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        # The roles are the bot's own (system, user, assistant): no further checks.
        history = cast(
            "list[ChatCompletionMessageParam]",
            [{"role": m["role"], "content": m["content"]} for m in messages],
        )
        try:
            # The response headers must come within the read timeout too (the SDK's
            # socket timeout); after that each chunk gets its own deadline below.
            # (stream=True: the options' spread hides that from the overloads)
            chunks = cast(
                "AsyncStream[ChatCompletionChunk]",
                await self._client.chat.completions.create(
                    model=self.model,
                    messages=history,
                    stream=True,
                    **self._options,
                ),
            )
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        finish: str | None = None
        try:
            iterator = aiter(chunks)
            while True:
                try:
                    async with asyncio.timeout(self.read_timeout):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._fail(
                        ProviderTimeout, f"no data for {self.read_timeout:g} s"
                    ) from None
                # Chunks without content (the role, reasoning, usage) only show the
                # service is alive; the deadline above restarts for them too.
                for choice in chunk.choices:
                    if choice.index == 0:
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
                        finish = choice.finish_reason or finish
        except openai.OpenAIError as exc:
            raise self._error(exc, streaming=True) from None
        except ValueError as exc:  # a data: line that is not JSON
            raise self._fail(ProviderUnreadable, f"unreadable stream ({exc})") from None
        finally:
            await chunks.close()
        if finish is None:
            # The SDK hides whether [DONE] came; every compatible server names a
            # finish_reason in its last chunk, so without one the stream was cut.
            raise self._fail(ProviderCutOff, "the stream ended without a finish_reason")
        if finish in TRUNCATING:
            raise ProviderTruncated(
                self._redact(f"{self._where()}: finish_reason {finish}"),
                provider=NAME,
                service=self._service,
                reason=finish,
            )

    async def close(self) -> None:
        await self._client.close()

    def _where(self) -> str:
        return f"{without_userinfo(self.base_url)} ({self.model})"

    def _fail(self, kind: type[ProviderError], detail: str) -> ProviderError:
        return kind(
            self._redact(f"{self._where()}: {detail}"), provider=NAME, service=self._service
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return without_userinfo(text)

    def _error(self, exc: openai.OpenAIError, *, streaming: bool = False) -> ProviderError:
        if isinstance(exc, openai.APITimeoutError):
            return self._fail(ProviderTimeout, "timed out")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            if streaming:  # the answer had begun: the connection broke mid-stream
                return self._fail(ProviderCutOff, f"stream broken ({detail})")
            return self._fail(ProviderUnavailable, f"connection failed ({detail})")
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (401, 403):
                # Not even the body: services echo parts of a wrong key in it.
                return self._fail(
                    ProviderAuthError,
                    f"HTTP {exc.status_code}: the API key was refused (check OPENAI_API_KEY)",
                )
            raw = str(exc.body) if exc.body is not None else exc.message
            detail = f"HTTP {exc.status_code}: {_excerpt(self._redact(raw))}"
            if exc.status_code == 404:
                detail += " (does OPENAI_BASE_URL end in /v1?)"
            return self._fail(ProviderUnavailable, detail)
        if isinstance(exc, openai.APIResponseValidationError):
            detail = _excerpt(self._redact(exc.message))
            return self._fail(ProviderUnreadable, f"unreadable answer ({detail})")
        # An error object inside the stream (OpenRouter sends upstream failures so).
        return self._fail(ProviderUnavailable, _excerpt(self._redact(str(exc))))


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXCERPT_LIMIT else f"{text[:EXCERPT_LIMIT]}… ({len(text)} chars)"
