"""Exceptions raised by the GPTalk client.

Every failure of a request surfaces as a subclass of :class:`GPTalkError`; raw
``aiohttp`` exceptions, ``KeyError`` and ``TimeoutError`` never escape the library.
Messages never contain the bearer token or the stream token.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "Endpoint",
    "GPTalkError",
    "ProtocolError",
    "StreamInterruptedError",
    "TokenStoreError",
]

Endpoint = Literal["login", "submit", "stream"]

EXCERPT_LIMIT = 200


def excerpt(text: str, limit: int = EXCERPT_LIMIT) -> str:
    """Trim ``text`` for an error message, keeping its start."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


class GPTalkError(Exception):
    """Base class of every error raised by :mod:`gptalk`.

    ``endpoint`` names the step that failed (``login``, ``submit`` or ``stream``)
    when the error belongs to one.
    """

    def __init__(self, message: str, *, endpoint: Endpoint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint: Endpoint | None = endpoint


class APIConnectionError(GPTalkError):
    """The service could not be reached, or the connection failed mid-request."""


class APITimeoutError(APIConnectionError):
    """Connecting took longer than the connect timeout, or no data arrived within
    the read timeout (a stalled answer)."""


class APIStatusError(GPTalkError):
    """The service answered with a non-success HTTP status."""

    def __init__(self, message: str, *, status: int, body: str = "", endpoint: Endpoint) -> None:
        super().__init__(message, endpoint=endpoint)
        self.status = status
        self.body = body


class AuthenticationError(APIStatusError):
    """The service rejected the token (HTTP 401/403) even after a fresh login."""


class ProtocolError(GPTalkError):
    """The service answered something this client cannot understand: a response
    without ``data`` or ``token``, or a malformed ``data:`` line.

    ``excerpt`` holds a trimmed copy of the offending text.
    """

    def __init__(
        self, message: str, *, excerpt: str = "", endpoint: Endpoint | None = None
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.excerpt = excerpt


class StreamInterruptedError(ProtocolError):
    """The answer stream ended before ``data: [DONE]``.

    Raised after every delta that did arrive has been yielded; ``received``
    holds that text so callers can keep it.
    """

    def __init__(self, message: str, *, received: str) -> None:
        super().__init__(message, endpoint="stream")
        self.received = received


class TokenStoreError(GPTalkError):
    """The token store (e.g. its Redis) failed, so no request could be made."""
