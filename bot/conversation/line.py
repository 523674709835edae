"""Each conversation's line of prompts: who runs now, who waits, in which order.

A conversation runs at most ``max_running`` answers at once (1 in a private chat,
``GROUP_MAX_CONCURRENT`` in a group), and one asker's prompts run one after the
other, in order: a follow-up waits behind the asker's own running answer while
other people's prompts go ahead. Waiting prompts start in ``order`` (the Telegram
``message_id``, which is what the user sees; with several replicas a later message
may reach its replica first) as soon as both rules allow; at most ``max_waiting``
wait.

:class:`Line` keeps the lines of this process; :class:`~bot.conversation.redis_line.RedisLine`
keeps them in Redis, shared by every replica. Both are used through :class:`Lines`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

__all__ = ["HandedOverError", "Line", "LineDroppedError", "Lines", "Ticket"]

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class Lines(Protocol[K_contra]):
    """Conversations' lines, in this process or shared through Redis."""

    async def enter(
        self, key: K_contra, sender: Hashable = None, *, order: int | None = None
    ) -> AbstractAsyncContextManager[object] | None:
        """Take a place, or None when the line is full. ``async with`` the ticket
        waits for its turn and gives the place up on exit. ``order`` (a message id)
        ranks it among the waiting; None: after everyone waiting now."""
        ...

    async def drop(self, key: K_contra) -> None:
        """Fail every waiting ticket of ``key`` (of every replica) with
        :class:`LineDroppedError`; running ones go on."""
        ...

    async def counts(self, key: K_contra) -> tuple[int, int]:
        """How many tickets of ``key`` run and how many wait."""
        ...


class LineDroppedError(Exception):
    """The ticket's line was dropped before its turn came."""


class HandedOverError(Exception):
    """The ticket's place went to another replica before its turn came
    (``RedisTicket.hand_over``)."""


class Ticket(Generic[K]):
    """A place in a conversation's line. ``async with ticket:`` waits for its turn
    and gives the place up on exit (also on error or cancellation)."""

    def __init__(self, line: Line[K], key: K, sender: Hashable, rank: tuple[int, int]) -> None:
        self._line, self.key, self.sender, self.rank = line, key, sender, rank
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Self:
        try:
            await asyncio.shield(self._turn)
        except BaseException:
            self._line._leave(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._line._leave(self)


class _Queue(Generic[K]):
    __slots__ = ("max_running", "max_waiting", "running", "waiting")

    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running, self.max_waiting = max_running, max_waiting
        self.running: list[Ticket[K]] = []
        self.waiting: list[Ticket[K]] = []  # by rank: (order, arrival)


class Line(Generic[K]):
    """Per-key lines (see the module docstring). ``limits(key)`` gives a key's
    ``(max_running, max_waiting)``; by default every key has the same."""

    def __init__(
        self,
        max_waiting: int = 3,
        max_running: int = 1,
        *,
        limits: Callable[[K], tuple[int, int]] | None = None,
    ) -> None:
        self._limits = limits or (lambda _key: (max_running, max_waiting))
        self._queues: dict[K, _Queue[K]] = {}
        self._arrivals = itertools.count()

    async def enter(
        self, key: K, sender: Hashable = None, *, order: int | None = None
    ) -> Ticket[K] | None:
        """Take a place (without awaiting anything, so arrival order is kept among
        equal orders), or None when full."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(*self._limits(key))
        elif len(queue.waiting) >= queue.max_waiting and not self._may_start(queue, sender):
            return None
        if order is None:
            order = queue.waiting[-1].rank[0] + 1 if queue.waiting else 0
        ticket = Ticket(self, key, sender, (order, next(self._arrivals)))
        queue.waiting.append(ticket)
        queue.waiting.sort(key=lambda waiting: waiting.rank)
        self._advance(queue)
        return ticket

    async def counts(self, key: K) -> tuple[int, int]:
        return self.running(key), self.waiting(key)

    def busy(self, key: K) -> bool:
        return key in self._queues

    def running(self, key: K) -> int:
        queue = self._queues.get(key)
        return len(queue.running) if queue else 0

    def waiting(self, key: K) -> int:
        queue = self._queues.get(key)
        return len(queue.waiting) if queue else 0

    @staticmethod
    def _may_start(queue: _Queue[K], sender: Hashable) -> bool:
        return len(queue.running) < queue.max_running and all(
            ticket.sender != sender for ticket in (*queue.running, *queue.waiting)
        )

    def _advance(self, queue: _Queue[K]) -> None:
        """Start waiting tickets, in their order, while the rules allow."""
        busy = {ticket.sender for ticket in queue.running}
        for ticket in list(queue.waiting):
            if len(queue.running) >= queue.max_running:
                return
            if ticket.sender in busy:
                continue  # behind the same asker's running answer (and its later ones too)
            busy.add(ticket.sender)
            if ticket._turn.done():  # dropped: it leaves on its own
                continue
            queue.waiting.remove(ticket)
            queue.running.append(ticket)
            ticket._turn.set_result(None)

    def _leave(self, ticket: Ticket[K]) -> None:
        queue = self._queues.get(ticket.key)
        if queue is None:
            return
        if ticket in queue.running:
            queue.running.remove(ticket)
        elif ticket in queue.waiting:
            queue.waiting.remove(ticket)
        else:
            return
        if not queue.running and not queue.waiting:
            del self._queues[ticket.key]
        else:
            self._advance(queue)

    async def drop(self, key: K) -> None:
        """Fail every waiting ticket of ``key`` with :class:`LineDroppedError`."""
        queue = self._queues.get(key)
        for ticket in list(queue.waiting) if queue else ():
            if not ticket._turn.done():
                ticket._turn.set_exception(LineDroppedError())
