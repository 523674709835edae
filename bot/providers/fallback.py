"""Several providers behind one :class:`~bot.providers.base.LLM`: ordered fallback
before the first visible text, a cool-down for providers that failed, and counters
per provider.

Fallback stops at the first visible text (the first delta that is not only
whitespace): from then on the user has seen one model's words, and a second
model's answer must never be stitched onto them, so a later failure ends the
answer with its notice. Whitespace before that is held back, so that it can be
dropped with the provider that sent it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from bot.storage.stats import MemoryStats, Stats, provider_counter
from gptalk import Message

from .base import Provider, ProviderError, ProviderTruncated

__all__ = ["FallbackLLM"]

log = logging.getLogger(__name__)


class FallbackLLM:
    """Tries ``providers`` in order for each answer. One that failed is skipped for
    ``cooldown`` seconds, so that a dead service does not add its timeout to every
    prompt; when every provider is cooling down they are tried in order anyway. A
    success ends a provider's cool-down."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        cooldown: float = 30.0,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not providers:
            raise ValueError("at least one provider is needed")
        self.providers = list(providers)
        self.cooldown = cooldown
        self._stats: Stats = stats if stats is not None else MemoryStats()
        self._clock = clock
        self._failed_at: dict[str, float] = {}  # kept per process: health is local

    def cooling_down(self, provider: Provider) -> bool:
        failed_at = self._failed_at.get(provider.name)
        return failed_at is not None and self._clock() - failed_at < self.cooldown

    def order(self) -> list[Provider]:
        """The providers in the order this answer tries them."""
        ready = [p for p in self.providers if not self.cooling_down(p)]
        return ready or list(self.providers)

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        error: ProviderError | None = None
        first = self.providers[0]
        for attempt, provider in enumerate(self.order()):
            if attempt:
                assert error is not None
                log.warning(
                    "%s failed before any text (%s); trying %s",
                    error.provider,
                    error,
                    provider.name,
                )
            elif provider is not self.providers[0]:
                log.info(
                    "%s is cooling down; trying %s first", self.providers[0].name, provider.name
                )
            # Counted once the attempt is over: no Redis round trip delays the
            # request or its first text.
            counts = {"requests": 1, "fallbacks": int(attempt > 0 or provider is not first)}
            started = self._clock()
            held = ""  # whitespace before the first visible text
            shown = False
            deltas = provider.stream(messages)
            try:
                async for delta in deltas:
                    if shown:
                        yield delta
                        continue
                    held += delta
                    if held.strip():
                        shown = True
                        counts["first_text_ms"] = round((self._clock() - started) * 1000)
                        counts["first_texts"] = 1
                        yield held
            except ProviderTruncated:
                # The service chose to end the answer: nothing is wrong with it, and
                # another model would only start over.
                self._failed_at.pop(provider.name, None)
                raise
            except ProviderError as exc:
                self._failed_at[provider.name] = self._clock()
                counts["failures"] = 1
                if shown:
                    raise
                error = exc
                continue
            finally:
                aclose = getattr(deltas, "aclose", None)
                if aclose is not None:  # release its connection now, also when stopped
                    await aclose()
                for counter, amount in counts.items():
                    if amount:
                        await self._count(provider, counter, amount)
            self._failed_at.pop(provider.name, None)
            if held and not shown:  # whitespace only: the reply shows it as empty
                yield held
            return
        assert error is not None
        raise error

    async def close(self) -> None:
        for provider in self.providers:
            await provider.close()

    async def _count(self, provider: Provider, counter: str, amount: int = 1) -> None:
        await self._stats.incr(provider_counter(provider.name, counter), amount)
