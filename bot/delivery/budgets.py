"""Telegram's budgets: how many calls a chat and the bot may make, and when.

Telegram does not publish its limits; our model (design.md) is: a private chat
takes about 1 message/s with a burst of 3, a group 20 messages per 60 s sliding
window, the bot as a whole about 30 per second. Edits count like messages.

:class:`TelegramLimits` holds the numbers the bot keeps to, stricter than the model
(bursts lower, windows longer) so that network jitter between our clock and
Telegram's cannot turn a compliant sequence into a 429. :class:`MemoryBudgets`
keeps the budgets of one process; the Redis backend shares them between replicas.
Both answer one question, atomically: may this call go now, and if not, how long
until it may — and is it the chat or the whole bot that is short?

Telegram counts a call when it arrives, some time between our grant and its
answer; a stalled event loop can hold granted calls back and then send them
together. So the bot-wide window holds each call from its grant until its answer
(*in flight*, :meth:`Budgets.settle`) and counts it from the answer on: however
late the requests leave, no rolling second at Telegram sees more calls than we
allowed in one.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

__all__ = [
    "Budgets",
    "FlightWindow",
    "MemoryBudgets",
    "Priority",
    "Scope",
    "SlidingWindow",
    "TelegramLimits",
    "TokenBucket",
    "Verdict",
]

Clock = Callable[[], float]


class Priority(enum.IntEnum):
    """The one order of every call the bot makes (design.md), most urgent first."""

    ANSWER = 0  # an answer's first message, a part that just filled up, its final edit
    CHATTER = 1  # command replies, refusals, notices
    EDIT = 2  # intermediate edits of a streaming answer


class Scope(enum.Enum):
    CHAT = "chat"  # this chat is short: other chats may go
    BOT = "bot"  # the bot-wide budget is short: nobody of this priority or lower may go


class Verdict(NamedTuple):
    wait: float  # 0: the call was counted and may go now; else seconds to wait
    scope: Scope | None = None
    ticket: str | None = None  # granted: the call, in flight until settled


# A call never settled (its process died) counts as answered this long after its
# grant (Telegram seconds): longer than any call takes.
FLIGHT_LAPSE: Final = 10.0
# When only calls in flight fill the bot-wide window, their answers free it; the
# backend cannot know when, so the scheduler looks again after this (Telegram s).
FLIGHT_RECHECK: Final = 0.05


@dataclass(frozen=True)
class TelegramLimits:
    """The budgets the bot keeps to, in Telegram seconds.

    Reserves are slots a priority may not use, kept for the more urgent ones:
    intermediate edits leave ``*_reserve_edit`` slots free, chatter
    ``*_reserve_chatter``; answers may use everything. So answers are never held up
    by edits, and chatter has a share that edits cannot take.

    ``time_scale`` shrinks every duration (tests run a fake Bot API with a faster
    clock); ``retry_after`` values from Telegram are scaled the same way.
    """

    private_rate: float = 1.0
    private_burst: int = 2
    private_reserve_chatter: int = 0
    private_reserve_edit: int = 1
    group_limit: int = 20
    group_window: float = 61.0
    group_reserve_chatter: int = 1
    group_reserve_edit: int = 3
    # No rolling second may hold more than 30 calls. Calls are counted from their
    # answers (see the module docstring), so network delays need no margin here;
    # two slots are left for Telegram counting a little differently.
    global_limit: int = 28
    global_window: float = 1.0
    global_reserve_chatter: int = 2
    global_reserve_edit: int = 6
    edit_interval: float = 1.0
    group_edit_interval: float = 3.0
    time_scale: float = 1.0

    def reserves(self, chat_id: int, priority: Priority) -> tuple[int, int]:
        """(chat reserve, bot-wide reserve) that a call of ``priority`` must leave."""
        if priority is Priority.ANSWER:
            return 0, 0
        private = chat_id > 0  # private chats have the user's (positive) id
        if priority is Priority.CHATTER:
            chat = self.private_reserve_chatter if private else self.group_reserve_chatter
            return chat, self.global_reserve_chatter
        chat = self.private_reserve_edit if private else self.group_reserve_edit
        return chat, self.global_reserve_edit

    def edit_interval_for(self, chat_id: int) -> float:
        return self.edit_interval if chat_id > 0 else self.group_edit_interval


class Budgets(Protocol):
    """Where the budgets live (one process, or Redis for several)."""

    limits: TelegramLimits

    def now(self) -> float:
        """Telegram seconds (the clock every wait is measured in)."""
        ...

    async def take(self, chat_id: int, priority: Priority) -> Verdict:
        """Count one call of ``priority`` in ``chat_id`` if it may go now; a grant's
        ticket holds its bot-wide slot until :meth:`settle`."""
        ...

    async def settle(self, ticket: str) -> None:
        """Telegram answered the call of ``ticket`` (or it was never made): it counts
        in the bot-wide window from now on."""
        ...

    async def block(self, chat_id: int, seconds: float) -> None:
        """Telegram answered 429: nothing goes to ``chat_id`` for ``seconds``."""
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


class FlightWindow:
    """The bot-wide sliding window, counting calls from their answers (module docstring)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._answered: deque[float] = deque()  # when each call was answered, in order
        # Tickets in flight, and the time each counts as answered if never settled.
        self._flying: dict[str, float] = {}
        self._tickets = itertools.count()

    def __contains__(self, ticket: str) -> bool:
        return ticket in self._flying

    def _prune(self, now: float) -> None:
        if self._flying:  # a few entries at most: the window's limit bounds them
            for ticket in [t for t, lapse in self._flying.items() if lapse <= now]:
                bisect.insort(self._answered, self._flying.pop(ticket))
        answered = self._answered
        while answered and answered[0] <= now - self.window:
            answered.popleft()

    def wait(self, now: float, need: int) -> float:
        self._prune(now)
        need = min(need, self.limit)
        excess = len(self._answered) + len(self._flying) + need - self.limit
        if excess <= 0:
            return 0.0
        if excess <= len(self._answered):
            return self._answered[excess - 1] + self.window - now
        return FLIGHT_RECHECK

    def take(self, now: float) -> str:
        self._prune(now)
        ticket = f"local:{next(self._tickets)}"
        self._flying[ticket] = now + FLIGHT_LAPSE
        return ticket

    def settle(self, ticket: str, now: float) -> None:
        if self._flying.pop(ticket, None) is not None:
            last = self._answered[-1] if self._answered else now
            self._answered.append(max(now, last))


class _Chat:
    __slots__ = ("blocked_until", "budget", "last_answer_call")

    def __init__(self, budget: TokenBucket | SlidingWindow) -> None:
        self.budget = budget
        self.blocked_until = 0.0
        # An intermediate edit keeps the edit interval after any call of an answer
        # (first message or edit): in a group where several answers start at once,
        # their first messages all go out before the first intermediate edit.
        self.last_answer_call = -1e18


class MemoryBudgets:
    """The budgets of one process."""

    PRUNE_EVERY: Final = 1000  # chats created between two sweeps of idle ones

    def __init__(self, limits: TelegramLimits = TelegramLimits(), *, clock: Clock | None = None):
        self.limits = limits
        base = clock or time.monotonic
        scale = limits.time_scale
        self.now: Clock = (lambda: base() / scale) if scale != 1.0 else base
        self._global = FlightWindow(limits.global_limit, limits.global_window)
        self._chats: dict[int, _Chat] = {}
        self._created = 0

    def __len__(self) -> int:
        return len(self._chats)

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            self._created += 1
            if self._created % self.PRUNE_EVERY == 0:
                self._prune()
            limits = self.limits
            budget: TokenBucket | SlidingWindow
            if chat_id > 0:
                budget = TokenBucket(limits.private_rate, limits.private_burst, self.now())
            else:
                budget = SlidingWindow(limits.group_limit, limits.group_window)
            chat = self._chats[chat_id] = _Chat(budget)
        return chat

    def _prune(self) -> None:
        # Only chats whose state equals a fresh one are forgotten (full budget, no
        # block, edit interval over), so forgetting never gives a chat more budget.
        now = self.now()
        for chat_id, chat in list(self._chats.items()):
            if (
                now >= chat.blocked_until
                and now >= chat.last_answer_call + self.limits.edit_interval_for(chat_id)
                and chat.budget.idle(now)
            ):
                del self._chats[chat_id]

    def check(self, chat_id: int, priority: Priority) -> Verdict:
        """:meth:`take`, synchronously (also the Redis backend's fallback)."""
        now = self.now()
        chat = self._chat(chat_id)
        chat_reserve, bot_reserve = self.limits.reserves(chat_id, priority)
        wait = max(chat.blocked_until - now, chat.budget.wait(now, 1 + chat_reserve))
        if priority is Priority.EDIT:
            interval = self.limits.edit_interval_for(chat_id)
            wait = max(wait, chat.last_answer_call + interval - now)
        if wait > 0:
            return Verdict(wait, Scope.CHAT)
        wait = self._global.wait(now, 1 + bot_reserve)
        if wait > 0:
            return Verdict(wait, Scope.BOT)
        return Verdict(0.0, None, self._count(chat, priority, now))

    def record(self, chat_id: int, priority: Priority) -> str:
        """Count a call that other budgets granted (the shared ones in Redis), so that
        these know this process's own calls if they must take over."""
        return self._count(self._chat(chat_id), priority, self.now())

    def _count(self, chat: _Chat, priority: Priority, now: float) -> str:
        chat.budget.take(now)
        ticket = self._global.take(now)
        if priority is not Priority.CHATTER:
            chat.last_answer_call = now
        return ticket

    async def take(self, chat_id: int, priority: Priority) -> Verdict:
        return self.check(chat_id, priority)

    def holds(self, ticket: str) -> bool:
        """Whether ``ticket`` is one of this object's calls in flight."""
        return ticket in self._global

    def settle_now(self, ticket: str) -> None:
        """:meth:`settle`, synchronously."""
        self._global.settle(ticket, self.now())

    async def settle(self, ticket: str) -> None:
        self.settle_now(ticket)

    def block_now(self, chat_id: int, seconds: float) -> None:
        chat = self._chat(chat_id)
        chat.blocked_until = max(chat.blocked_until, self.now() + seconds)

    async def block(self, chat_id: int, seconds: float) -> None:
        self.block_now(chat_id, seconds)
