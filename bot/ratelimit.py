"""Pacing every message the bot sends or edits, per chat and bot-wide.

Telegram's limits are not published; our model (design.md) is: a private chat
takes about 1 message/s with a burst of 3, a group 20 messages per 60 s sliding
window, the bot as a whole about 30/s. Edits count like messages.

Each chat has a :class:`ChatLimiter`; all of them share one bot-wide budget. A
caller *acquires* a slot with a priority: first messages and final edits are
``HIGH``; intermediate edits of a streaming answer are ``LOW``, which must also
keep the chat's edit interval and leave a reserve of the budget for ``HIGH``
calls, so that a final edit never waits behind a row of intermediate ones. A 429
blocks the chat for its ``retry_after``.

:class:`RateLimitMiddleware` puts every ``sendMessage``/``editMessageText`` made
through the bot's session behind these limiters, so no code path can bypass
them; the streaming editor acquires its slots itself (it picks the content to
send only once it has a slot, so the newest text goes out) and marks its calls as
already paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import EditMessageText, SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType

__all__ = [
    "Budget",
    "ChatLimiter",
    "Limiters",
    "Priority",
    "RateLimitMiddleware",
    "SlidingWindow",
    "TelegramLimits",
    "TokenBucket",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Priority(enum.IntEnum):
    HIGH = 0  # first messages, final edits, command replies
    LOW = 1  # intermediate edits of a streaming answer


class Budget(Protocol):
    def wait(self, now: float, need: int) -> float:
        """Seconds until ``need`` calls could be made at once (0 when now)."""
        ...

    def take(self, now: float) -> None: ...

    def idle(self, now: float) -> bool:
        """Whether the budget is back to full (the limiter can be forgotten)."""
        ...


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._updated = float(burst), now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait(self, now: float, need: int) -> float:
        self._refill(now)
        return max(0.0, (min(need, self.burst) - self._tokens) / self.rate)

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1

    def idle(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.burst


class SlidingWindow:
    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._calls: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - self.window:
            self._calls.popleft()

    def wait(self, now: float, need: int) -> float:
        self._prune(now)
        need = min(need, self.limit)
        excess = len(self._calls) + need - self.limit
        if excess <= 0:
            return 0.0
        return self._calls[excess - 1] + self.window - now

    def take(self, now: float) -> None:
        self._prune(now)
        self._calls.append(now)

    def idle(self, now: float) -> bool:
        self._prune(now)
        return not self._calls


@dataclass(frozen=True)
class TelegramLimits:
    """The budgets the bot keeps to. Stricter than Telegram's (bursts lower, the
    group window a second longer, the bot-wide rate 25/s instead of 30/s) so that
    network jitter and event-loop lag between our clock and Telegram's cannot turn a
    compliant sequence into a 429.

    ``time_scale`` shrinks every duration (tests run a fake Bot API with a faster
    clock); ``retry_after`` values from Telegram are scaled the same way.
    """

    private_rate: float = 1.0
    private_burst: int = 2
    private_reserve: int = 1
    group_limit: int = 20
    group_window: float = 61.0
    group_reserve: int = 3
    global_rate: float = 25.0
    global_burst: int = 20
    global_reserve: int = 5
    edit_interval: float = 1.0
    group_edit_interval: float = 3.0
    time_scale: float = 1.0


@dataclass
class _Waiter:
    seq: int
    priority: Callable[[], Priority]


class ChatLimiter:
    """The pacing of one chat: its own budget plus the bot-wide one."""

    def __init__(
        self,
        budget: Budget,
        shared: Budget,
        *,
        reserve: int,
        shared_reserve: int,
        edit_interval: float,
        clock: Clock,
        time_scale: float = 1.0,
    ) -> None:
        self._budget, self._shared = budget, shared
        self._time_scale = time_scale
        self._reserve, self._shared_reserve = reserve, shared_reserve
        self.edit_interval = edit_interval
        self._clock = clock
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._blocked_until = 0.0
        self._last_low = -math.inf
        self._wakeup: asyncio.Future[None] | None = None

    def block(self, seconds: float) -> None:
        """Stop every call in this chat for ``seconds`` (after a 429)."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)
        self.poke()

    def poke(self) -> None:
        """Re-evaluate waiters (a priority changed, or time limits moved)."""
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = None

    async def acquire(self, priority: Priority | Callable[[], Priority] = Priority.HIGH) -> None:
        """Wait for a slot and take it.

        ``priority`` may be a callable, read at every re-evaluation: a streaming
        answer's pending intermediate edit becomes a final edit when the stream
        ends, and should jump the queue then (call :meth:`poke`).
        """
        get_priority = priority if callable(priority) else (lambda: priority)
        me = _Waiter(next(self._seq), get_priority)
        self._waiters.append(me)
        try:
            while True:
                delay = self._delay_for(me)
                if delay <= 0:
                    self._take(me)
                    return
                if self._wakeup is None:
                    self._wakeup = asyncio.get_running_loop().create_future()
                timeout = None if delay == math.inf else delay * self._time_scale
                await asyncio.wait([self._wakeup], timeout=timeout)
        finally:
            if me in self._waiters:
                self._waiters.remove(me)
                self.poke()

    def _delay_for(self, me: _Waiter) -> float:
        head = min(self._waiters, key=lambda w: (w.priority(), w.seq))
        if head is not me:
            return math.inf  # woken when the head is served
        now = self._clock()
        low = me.priority() is Priority.LOW
        return max(
            self._blocked_until - now,
            self._budget.wait(now, 1 + (self._reserve if low else 0)),
            self._shared.wait(now, 1 + (self._shared_reserve if low else 0)),
            (self._last_low + self.edit_interval - now) if low else 0.0,
        )

    def _take(self, me: _Waiter) -> None:
        now = self._clock()
        self._budget.take(now)
        self._shared.take(now)
        if me.priority() is Priority.LOW:
            self._last_low = now
        self._waiters.remove(me)
        self.poke()

    def idle(self) -> bool:
        now = self._clock()
        return not self._waiters and now >= self._blocked_until and self._budget.idle(now)


# Set while the streaming editor makes a call for which it already holds a slot.
_paced: contextvars.ContextVar[bool] = contextvars.ContextVar("paced", default=False)


class Limiters:
    """Every chat's limiter, created on first use, plus the bot-wide budget."""

    PRUNE_EVERY: Final = 1000

    def __init__(
        self, limits: TelegramLimits = TelegramLimits(), *, clock: Clock | None = None
    ) -> None:
        self.limits = limits
        scale = limits.time_scale
        base = clock or time.monotonic
        # Internally everything runs on a clock that is faster by 1/scale.
        self._clock: Clock = (lambda: base() / scale) if scale != 1.0 else base
        self._shared = TokenBucket(limits.global_rate, limits.global_burst, self._clock())
        self._chats: dict[int, ChatLimiter] = {}
        self._created = 0

    def for_chat(self, chat_id: int) -> ChatLimiter:
        limiter = self._chats.get(chat_id)
        if limiter is None:
            self._created += 1
            if self._created % self.PRUNE_EVERY == 0:
                self._prune()
            limits, now = self.limits, self._clock()
            budget: Budget
            if chat_id > 0:  # private chats have the user's (positive) id
                budget = TokenBucket(limits.private_rate, limits.private_burst, now)
                reserve, interval = limits.private_reserve, limits.edit_interval
            else:
                budget = SlidingWindow(limits.group_limit, limits.group_window)
                reserve, interval = limits.group_reserve, limits.group_edit_interval
            limiter = ChatLimiter(
                budget,
                self._shared,
                reserve=reserve,
                shared_reserve=limits.global_reserve,
                edit_interval=interval,
                clock=self._clock,
                time_scale=limits.time_scale,
            )
            self._chats[chat_id] = limiter
        return limiter

    def _prune(self) -> None:
        for chat_id in [chat_id for chat_id, lim in self._chats.items() if lim.idle()]:
            del self._chats[chat_id]

    def retry_after(self, chat_id: int, seconds: float) -> None:
        """Telegram answered 429: block that chat (``seconds`` are Telegram's)."""
        self.for_chat(chat_id).block(seconds + 0.5)

    @staticmethod
    @contextlib.contextmanager
    def paced() -> Iterator[None]:
        """Mark calls made inside as already holding a slot."""
        token = _paced.set(True)
        try:
            yield
        finally:
            _paced.reset(token)


PACED_METHODS: Final = (SendMessage, EditMessageText)


class RateLimitMiddleware(BaseRequestMiddleware):
    """Session middleware: every message-creating call waits for its chat's slot.

    Calls the streaming editor already paced pass straight through, and a 429 is
    raised to it (it re-plans with the newest text). Other calls (command replies,
    notices) get a HIGH slot here, and are retried after a 429 once the block lifts,
    up to ``max_retries`` times.
    """

    def __init__(
        self,
        limiters: Limiters,
        *,
        max_retries: int = 3,
        on_retry_after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._limiters = limiters
        self._max_retries = max_retries
        self._on_retry_after = on_retry_after

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        chat_id = getattr(method, "chat_id", None)
        counted = isinstance(method, PACED_METHODS)  # kept apart: narrowing loses the generic
        if not counted or not isinstance(chat_id, int):
            return await make_request(bot, method)
        limiter = self._limiters.for_chat(chat_id)
        paced = _paced.get()
        for attempt in itertools.count():
            if not paced or attempt:
                await limiter.acquire(Priority.HIGH)
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                self._limiters.retry_after(chat_id, exc.retry_after)
                log.warning("429 in chat %s: retry after %s s", chat_id, exc.retry_after)
                if self._on_retry_after is not None:
                    await self._on_retry_after()
                if paced or attempt >= self._max_retries:
                    raise
        raise AssertionError("unreachable")
