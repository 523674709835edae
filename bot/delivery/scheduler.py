"""One bot-wide priority queue for every call that counts against Telegram's limits.

Every ``sendMessage``/``editMessageText``/``sendMessageDraft`` first gets a slot
here. Waiting calls are ordered by priority (:class:`~bot.delivery.budgets.Priority`: answers, then
chatter, then intermediate edits), then by arrival. One task hands out the slots:
it asks the budgets (:mod:`bot.delivery.budgets`, in this process or in Redis)
whether the best waiting call may go, and

* grants it (one future resolved: nobody else wakes up);
* or parks its chat until the chat's budget allows (other chats go on);
* or, when the bot-wide budget is short, sleeps on one timer until it is not.

A granted call holds its bot-wide slot *in flight* until the caller settles it
(:meth:`Scheduler.settle`) once Telegram has answered (see :mod:`bot.delivery.budgets`).

Only the head of each chat (its most urgent call) takes part, so a grant costs
O(log n) in the number of waiting calls. Stale heap entries (a chat whose head
changed) are skipped lazily.

:class:`RateLimitMiddleware` puts every such call made through the bot's session
behind the scheduler, so no code path can bypass it; the streaming editor
acquires its slots itself (it picks the content only once it has a slot, so the
newest text goes out) and marks its calls as already paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import EditMessageText, SendMessage, SendMessageDraft, TelegramMethod
from aiogram.methods.base import Response, TelegramType

from bot.tasks import stop_task

from .budgets import Budgets, Priority, Scope

__all__ = ["ChatterDroppedError", "RateLimitMiddleware", "Scheduler", "SlotRequest"]

log = logging.getLogger(__name__)

# Added to every retry_after we obey: Telegram's clock and ours differ a little.
RETRY_MARGIN: Final = 0.5


class ChatterDroppedError(Exception):
    """A non-answer reply could not get a slot in time and was dropped."""


class SlotRequest:
    """A call waiting for its slot. ``await request.granted`` resolves on the grant."""

    __slots__ = ("_scheduler", "asked_at", "chat_id", "granted", "priority", "seq", "ticket")

    def __init__(self, scheduler: Scheduler, chat_id: int, priority: Priority, seq: int) -> None:
        self._scheduler = scheduler
        self.chat_id, self.priority, self.seq = chat_id, priority, seq
        loop = asyncio.get_running_loop()
        self.granted: asyncio.Future[None] = loop.create_future()
        self.asked_at = loop.time()
        self.ticket: str | None = None  # the budgets' handle of the call, once granted

    @property
    def done(self) -> bool:
        return self.granted.done()

    def promote(self, priority: Priority) -> None:
        """Make the call more urgent (an intermediate edit became the final one)."""
        if priority < self.priority and not self.done:
            self.priority = priority
            self._scheduler._requeue(self)

    def cancel(self) -> None:
        if not self.done:
            self.granted.cancel()
            self._scheduler._withdraw(self)


class _ChatLine:
    """The calls waiting in one chat, most urgent first (a heap, lazily cleaned)."""

    __slots__ = ("heap", "version")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, SlotRequest]] = []
        self.version = 0

    def head(self) -> SlotRequest | None:
        heap = self.heap
        while heap:
            priority, _, request = heap[0]
            if not request.done and priority == request.priority:
                return request
            heapq.heappop(heap)  # granted, cancelled, or promoted since (stale copy)
        return None


# Set while the streaming editor makes a call for which it already holds a slot.
_paced: contextvars.ContextVar[bool] = contextvars.ContextVar("paced", default=False)
# The priority of calls made through the middleware (command replies by default).
_call_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "call_priority", default=Priority.CHATTER
)


class Scheduler:
    """The bot-wide queue of calls waiting for a slot (see the module docstring)."""

    def __init__(
        self, budgets: Budgets, *, on_grant: Callable[[Priority, float], None] | None = None
    ) -> None:
        self.budgets = budgets
        # Told each grant's priority and wait in seconds (the metrics).
        self._on_grant = on_grant
        self.limits = budgets.limits
        self._scale = budgets.limits.time_scale
        self._seq = itertools.count()
        self._chats: dict[int, _ChatLine] = {}
        # (priority, seq, chat_id, version): chats whose head may be ready now
        self._ready: list[tuple[int, int, int, int]] = []
        # (until, chat_id, version): chats whose own budget is short until then
        self._parked: list[tuple[float, int, int]] = []
        # The bot-wide budget is short for this priority and below until then.
        self._bot_short: tuple[float, Priority] = (0.0, Priority.ANSWER)
        self._wakeup: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self.grants = 0  # slots handed out
        self.checks = 0  # questions asked of the budgets

    @property
    def waiting(self) -> int:
        return sum(len(line.heap) for line in self._chats.values())

    # --- asking for slots -------------------------------------------------------------

    def request(self, chat_id: int, priority: Priority) -> SlotRequest:
        """Queue a call (synchronously: arrival order is the order of these calls)."""
        request = SlotRequest(self, chat_id, priority, next(self._seq))
        line = self._chats.get(chat_id)
        if line is None:
            line = self._chats[chat_id] = _ChatLine()
        heapq.heappush(line.heap, (priority, request.seq, request))
        if line.head() is request:
            self._head_changed(chat_id, line)
        self._ensure_runner()
        return request

    async def acquire(
        self, chat_id: int, priority: Priority = Priority.ANSWER, *, deadline: float | None = None
    ) -> None:
        """Wait for a slot for a call made at once, counted from now on; with
        ``deadline`` (Telegram seconds), give up after it with
        :class:`ChatterDroppedError`."""
        request = self.request(chat_id, priority)
        await self.wait(request, deadline=deadline)
        await self.settle(request)

    async def settle(self, request: SlotRequest) -> None:
        """``request``'s call was answered, failed or not made: its bot-wide slot
        counts from now on. Idempotent; call it for every granted request."""
        ticket, request.ticket = request.ticket, None
        if ticket is None:
            return
        await self.budgets.settle(ticket)
        if self._bot_short[0]:  # the bot-wide budget may have room again
            self._bot_short = (0.0, Priority.ANSWER)
            self._wake()

    async def wait(self, request: SlotRequest, *, deadline: float | None = None) -> None:
        """Wait until ``request`` is granted (withdrawn if the wait ends otherwise)."""
        chat_id = request.chat_id
        try:
            if deadline is None:
                await asyncio.shield(request.granted)
            else:
                async with asyncio.timeout(deadline * self._scale):
                    await asyncio.shield(request.granted)
        except TimeoutError:
            request.cancel()
            if not request.granted.cancelled():  # granted at the last moment
                return
            raise ChatterDroppedError(f"no slot in chat {chat_id} within {deadline} s") from None
        except BaseException:
            request.cancel()
            await self.settle(request)  # granted as the wait ended: no call is made
            raise

    async def block(self, chat_id: int, seconds: float) -> None:
        """Telegram answered 429: hold every call of that chat for ``seconds``."""
        await self.budgets.block(chat_id, seconds + RETRY_MARGIN)
        line = self._chats.get(chat_id)
        if line is not None and line.head() is not None:
            self._head_changed(chat_id, line)  # its head must ask the budgets again

    @staticmethod
    @contextlib.contextmanager
    def paced() -> Iterator[None]:
        """Mark calls made inside as already holding a slot."""
        token = _paced.set(True)
        try:
            yield
        finally:
            _paced.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def calls_as(priority: Priority) -> Iterator[None]:
        """Calls made inside (through the middleware) get ``priority``, not chatter's."""
        token = _call_priority.set(priority)
        try:
            yield
        finally:
            _call_priority.reset(token)

    async def aclose(self) -> None:
        await stop_task(self._runner)
        self._runner = None

    # --- bookkeeping --------------------------------------------------------------------

    def _head_changed(self, chat_id: int, line: _ChatLine) -> None:
        line.version += 1
        head = line.head()
        if head is None:
            del self._chats[chat_id]
            return
        heapq.heappush(self._ready, (head.priority, head.seq, chat_id, line.version))
        self._wake()

    def _requeue(self, request: SlotRequest) -> None:
        line = self._chats[request.chat_id]
        heapq.heappush(line.heap, (request.priority, request.seq, request))
        if line.head() is request:
            self._head_changed(request.chat_id, line)

    def _withdraw(self, request: SlotRequest) -> None:
        line = self._chats.get(request.chat_id)
        if line is not None and line.heap and line.heap[0][2] is request:
            self._head_changed(request.chat_id, line)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    # --- handing out slots --------------------------------------------------------------

    def _best(self) -> tuple[int, _ChatLine, SlotRequest] | None:
        """The most urgent chat head that may be ready (stale entries dropped)."""
        ready = self._ready
        while ready:
            _, _, chat_id, version = ready[0]
            line = self._chats.get(chat_id)
            if line is not None and line.version == version:
                head = line.head()
                if head is not None:
                    return chat_id, line, head
            heapq.heappop(ready)
        return None

    def _unpark(self, now: float) -> None:
        parked = self._parked
        while parked and parked[0][0] <= now:
            _, chat_id, version = heapq.heappop(parked)
            line = self._chats.get(chat_id)
            if line is not None and line.version == version:
                self._head_changed(chat_id, line)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        budgets = self.budgets
        while True:
            self._wakeup = loop.create_future()
            now = budgets.now()
            self._unpark(now)
            best = self._best()
            sleep: float | None = None
            if best is not None:
                chat_id, line, head = best
                short_until, short_priority = self._bot_short
                if head.priority >= short_priority and now < short_until:
                    sleep = short_until - now
                else:
                    version = line.version
                    self.checks += 1
                    try:
                        verdict = await budgets.take(chat_id, head.priority)
                    except Exception:  # a backend failure must not stop every answer
                        log.exception("the Telegram budgets failed; retrying")
                        await asyncio.sleep(0.5)
                        continue
                    if verdict.wait <= 0:
                        self.grants += 1
                        if head.done:  # withdrawn while we asked: no call is made
                            if verdict.ticket is not None:
                                await budgets.settle(verdict.ticket)
                            continue
                        head.ticket = verdict.ticket
                        head.granted.set_result(None)
                        if self._on_grant is not None:
                            self._on_grant(head.priority, loop.time() - head.asked_at)
                        self._head_changed(chat_id, line)
                        continue
                    if verdict.scope is Scope.BOT:
                        self._bot_short = (budgets.now() + verdict.wait, head.priority)
                        continue
                    if line.version == version:  # else its new head is queued already
                        line.version += 1  # its entry in the ready heap is stale now
                        until = budgets.now() + verdict.wait
                        heapq.heappush(self._parked, (until, chat_id, line.version))
                    continue
            if self._parked:
                until = self._parked[0][0] - now
                sleep = until if sleep is None else min(sleep, until)
            timer = None
            if sleep is not None:
                timer = loop.call_later(max(0.0, sleep) * self._scale, self._wake)
            try:
                await self._wakeup
            finally:
                if timer is not None:
                    timer.cancel()


# Drafts count against the chat's flood limits like messages do.
PACED_METHODS: Final = (SendMessage, EditMessageText, SendMessageDraft)


class RateLimitMiddleware(BaseRequestMiddleware):
    """Session middleware: every message-creating call waits for its chat's slot.

    Calls the streaming editor already paced pass straight through, and a 429 is
    raised to it (it re-plans with the newest text). Other calls get a slot of the
    priority set by :meth:`Scheduler.calls_as` (chatter by default); chatter that
    cannot get one within ``chatter_deadline`` is dropped
    (:class:`ChatterDroppedError`), and after a 429 a call is retried once the block
    lifts, up to ``max_retries`` times.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        max_retries: int = 3,
        chatter_deadline: float = 5.0,
        on_retry_after: Callable[[], Awaitable[None]] | None = None,
        on_dropped: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._max_retries = max_retries
        self._chatter_deadline = chatter_deadline
        self._on_retry_after = on_retry_after
        self._on_dropped = on_dropped

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
        scheduler, paced = self._scheduler, _paced.get()
        priority = _call_priority.get()
        deadline = self._chatter_deadline if priority is Priority.CHATTER else None
        for attempt in itertools.count():
            slot = None
            if not paced or attempt:
                slot = scheduler.request(chat_id, priority)
                try:
                    await scheduler.wait(slot, deadline=deadline)
                except ChatterDroppedError:
                    log.info(
                        "dropped a %s to chat %s: no slot in time", type(method).__name__, chat_id
                    )
                    if self._on_dropped is not None:
                        await self._on_dropped()
                    raise
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                await scheduler.block(chat_id, exc.retry_after)
                log.warning("429 in chat %s: retry after %s s", chat_id, exc.retry_after)
                if self._on_retry_after is not None:
                    await self._on_retry_after()
                if paced or attempt >= self._max_retries:
                    raise
            finally:
                if slot is not None:
                    await scheduler.settle(slot)
        raise AssertionError("unreachable")
