"""Prometheus metrics.

One :class:`Metrics` is built in the composition root and handed to the parts
that count (no module-level registry: each ``Metrics`` owns a
``CollectorRegistry``, so tests and several bots in one process do not collide).
Labels never carry chat or user ids: a label value per chat would grow the
series without bound and put who-talks-to-the-bot into the monitoring system.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import Message, TelegramObject, Update
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.logs import log_context

__all__ = ["AnswerMetrics", "Metrics", "ObserveUpdates", "TelegramCallMetrics"]

_SECONDS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_COUNTS: Final = (0, 1, 2, 5, 10, 20, 50, 100, 200)
_LAG: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# Telegram's errors as a small, fixed set of label values.
_RESULTS: Final[tuple[tuple[type[TelegramAPIError], str], ...]] = (
    (TelegramRetryAfter, "retry_after"),
    (TelegramBadRequest, "bad_request"),
    (TelegramForbiddenError, "forbidden"),
    (TelegramNotFound, "not_found"),
    (TelegramConflictError, "conflict"),
    (TelegramUnauthorizedError, "unauthorized"),
    (TelegramServerError, "server_error"),
    (TelegramNetworkError, "network_error"),
)


class Metrics:
    """Every metric of one bot process, in its own registry."""

    def __init__(self, replica: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        info = Gauge("gptalk_bot_replica", "This process (always 1).", ["replica"], registry=r)
        info.labels(replica).set(1)
        self.updates = Counter(
            "gptalk_bot_updates_received", "Updates received, by type.", ["type"], registry=r
        )
        self.webhook_duplicates = Counter(
            "gptalk_bot_webhook_duplicates",
            "Webhook updates already claimed (by this or another replica).",
            registry=r,
        )
        self.prompts = Counter("gptalk_bot_prompts", "Prompts (and /retry) to answer.", registry=r)
        self.answers = Counter("gptalk_bot_answers_completed", "Answers completed.", registry=r)
        self.answer_failures = Counter(
            "gptalk_bot_answers_failed", "Answers that failed, by reason.", ["reason"], registry=r
        )
        self.logins = Counter("gptalk_bot_gptalk_logins", "GPTalk logins.", registry=r)
        self.first_chunk = Histogram(
            "gptalk_bot_first_chunk_seconds",
            "From the start of an answer to its first text.",
            buckets=_SECONDS,
            registry=r,
        )
        self.stream_time = Histogram(
            "gptalk_bot_stream_seconds",
            "Whole answers, start to end.",
            buckets=_SECONDS,
            registry=r,
        )
        self.edits_per_answer = Histogram(
            "gptalk_bot_edits_per_answer", "editMessageText calls per answer.", buckets=_COUNTS,
            registry=r,
        )  # fmt: skip
        self.streaming = Gauge("gptalk_bot_answers_streaming", "Answers streaming now.", registry=r)
        self.telegram_calls = Counter(
            "gptalk_bot_telegram_calls",
            "Bot API calls, by method and result.",
            ["method", "result"],
            registry=r,
        )
        self.telegram_429s = Counter(
            "gptalk_bot_telegram_429", "Bot API calls answered 429.", registry=r
        )
        self.limiter_wait = Histogram(
            "gptalk_bot_limiter_wait_seconds",
            "From asking the scheduler for a slot to the grant, by priority.",
            ["priority"],
            buckets=_SECONDS,
            registry=r,
        )
        self.loop_lag = Gauge(
            "gptalk_bot_event_loop_lag_seconds", "The last delay of the lag probe.", registry=r
        )
        self.loop_lag_seconds = Histogram(
            "gptalk_bot_event_loop_lag", "Delays of the lag probe's timer.", buckets=_LAG,
            registry=r,
        )  # fmt: skip

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def answer(self) -> AnswerMetrics:
        return AnswerMetrics(self)

    def limiter_granted(self, priority: str, waited: float) -> None:
        self.limiter_wait.labels(priority).observe(waited)

    def loop_lagged(self, delay: float) -> None:
        """One sample of the lag probe (bot/lag.py)."""
        self.loop_lag.set(delay)
        self.loop_lag_seconds.observe(delay)


class AnswerMetrics:
    """One answer's timing: started when built, ended by :meth:`finish`."""

    __slots__ = ("_failed", "_first", "_metrics", "_started")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.monotonic()
        self._first = False
        self._failed = False

    def text(self) -> None:
        """A piece of text arrived (only the first one counts)."""
        if not self._first:
            self._first = True
            self._metrics.first_chunk.observe(time.monotonic() - self._started)

    def failed(self, reason: str) -> None:
        if not self._failed:
            self._failed = True
            self._metrics.answer_failures.labels(reason).inc()

    def finish(self, edits: int) -> None:
        self._metrics.stream_time.observe(time.monotonic() - self._started)
        self._metrics.edits_per_answer.observe(edits)
        if not self._failed:
            self._metrics.answers.inc()


class TelegramCallMetrics(BaseRequestMiddleware):
    """Session middleware: every Bot API request, by method and result."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        name = method.__api_method__
        try:
            response = await make_request(bot, method)
        except TelegramAPIError as exc:
            result = next((label for kind, label in _RESULTS if isinstance(exc, kind)), "error")
            self._metrics.telegram_calls.labels(name, result).inc()
            if isinstance(exc, TelegramRetryAfter):
                self._metrics.telegram_429s.inc()
            raise
        self._metrics.telegram_calls.labels(name, "ok").inc()
        return response


class ObserveUpdates(BaseMiddleware):
    """Outer update middleware: counts updates and names their chat in the logs."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update):
            return await handler(event, data)
        self._metrics.updates.labels(event.event_type).inc()
        context: dict[str, Any] = {"update": event.update_id}
        message = event.message or event.edited_message
        if message is None and event.callback_query is not None:
            inner = event.callback_query.message
            message = inner if isinstance(inner, Message) else None
        if message is not None:
            chat = message.chat.id
            context["chat"] = chat
            topical = message.is_topic_message and message.message_thread_id is not None
            context["conversation"] = (
                f"{chat}:{message.message_thread_id}" if topical else str(chat)
            )
        token = log_context.set({**log_context.get(), **context})
        try:
            return await handler(event, data)
        finally:
            log_context.reset(token)
