"""GPTalk as a provider: :class:`gptalk.GPTalkClient` with the bot's errors.

The client flattens the chat messages into GPTalk's single prompt itself, and
already bounds connect and per-chunk reads; this adapter only translates errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from gptalk import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    GPTalkClient,
    GPTalkError,
    Message,
    StreamInterruptedError,
    TokenStoreError,
)

from .base import (
    ProviderCutOff,
    ProviderError,
    ProviderStorageError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreadable,
)

__all__ = ["GPTalkProvider", "provider_error"]

NAME = "gptalk"


def provider_error(error: GPTalkError, service: str = "GPTalk") -> ProviderError:
    """The bot's error for a GPTalk error (its text is already free of tokens)."""
    kind: type[ProviderError]
    if isinstance(error, APITimeoutError):
        kind = ProviderTimeout
    elif isinstance(error, TokenStoreError):
        kind = ProviderStorageError
    elif isinstance(error, StreamInterruptedError):
        kind = ProviderCutOff
    elif isinstance(error, APIStatusError | APIConnectionError):
        # A refused login or token is GPTalk being unavailable: there is no key to fix.
        kind = ProviderUnavailable
    else:
        kind = ProviderUnreadable
    return kind(str(error), provider=NAME, service=service)


class GPTalkProvider:
    name = NAME

    def __init__(self, client: GPTalkClient, *, service: str = "GPTalk") -> None:
        self.client = client
        self._service = service

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        answer = self.client.stream(messages)
        try:
            async for delta in answer:
                yield delta
        except GPTalkError as exc:
            raise provider_error(exc, self._service) from exc
        finally:
            await answer.aclose()  # release the HTTP response now, also when stopped early

    async def close(self) -> None:
        await self.client.close()
