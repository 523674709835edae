"""What the bot needs from a model service, and how a service fails.

The errors are the bot's own, not the ``gptalk`` library's: the OpenAI adapter
must not raise ``GPTalkError``, and the answering code and the fallback should not
know which library sits behind a provider. Each adapter translates its library's
errors at the boundary (``raise ... from exc``) into one of the few kinds the user
is told about. ``str(error)`` is for logs and never holds a secret; ``service`` is
the name the user's notice uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from gptalk import Message

__all__ = [
    "LLM",
    "Provider",
    "ProviderAuthError",
    "ProviderCutOff",
    "ProviderError",
    "ProviderStorageError",
    "ProviderTimeout",
    "ProviderTruncated",
    "ProviderUnavailable",
    "ProviderUnreadable",
    "service_name",
]


class LLM(Protocol):
    """A text-generation provider: the answer to ``messages`` as text deltas."""

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]: ...


class Provider(LLM, Protocol):
    """An LLM the fallback can name (``LLM_PROVIDERS``) and close on shutdown."""

    name: str

    async def close(self) -> None: ...


def service_name(providers: Sequence[str]) -> str:
    """How notices and /help name the model service: GPTalk when it is the only
    provider (as before there were others), otherwise neutrally, because with a
    fallback the user cannot tell (nor needs to) which one answered."""
    return "GPTalk" if list(providers) == ["gptalk"] else "the model service"


class ProviderError(Exception):
    """A provider failed. ``provider`` is its setting name (``gptalk``, ``openai``)."""

    def __init__(self, message: str, *, provider: str, service: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.service = service


class ProviderUnavailable(ProviderError):
    """Could not be reached, or answered with an error status."""


class ProviderAuthError(ProviderUnavailable):
    """Rejected the bot's credentials (an API key): only an admin can fix it."""


class ProviderStorageError(ProviderUnavailable):
    """The provider's own state (e.g. GPTalk's token in Redis) could not be read."""


class ProviderTimeout(ProviderError):
    """No connection within the connect timeout, or no new data within the read
    timeout (before the first chunk or between chunks)."""


class ProviderCutOff(ProviderError):
    """The stream broke or ended before the answer was complete."""


class ProviderTruncated(ProviderCutOff):
    """The service itself ended the answer early (length limit or content filter).

    Not a failure of the service: it is neither retried elsewhere nor cooled down.
    """

    def __init__(self, message: str, *, provider: str, service: str, reason: str) -> None:
        super().__init__(message, provider=provider, service=service)
        self.reason = reason


class ProviderUnreadable(ProviderError):
    """Answered something that could not be parsed."""
