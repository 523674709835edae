"""One generation at a time per conversation; later prompts wait in FIFO order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["KeyedLock", "Line", "LineDroppedError", "Ticket"]

K = TypeVar("K", bound=Hashable)


class LineDroppedError(Exception):
    """The ticket's line was dropped before its turn came."""


class Ticket(Generic[K]):
    """A place in a conversation's line. ``async with ticket:`` waits for its turn
    and gives the turn to the next ticket on exit (also on error or cancellation)."""

    def __init__(self, line: Line[K], key: K) -> None:
        self._line, self.key = line, key
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


class Line(Generic[K]):
    """Per-key FIFO lines of at most one running and ``max_waiting`` waiting tickets."""

    def __init__(self, max_waiting: int = 3) -> None:
        self._max_waiting = max_waiting
        self._lines: dict[K, deque[Ticket[K]]] = {}

    def enter(self, key: K) -> Ticket[K] | None:
        """Take a place (synchronously, so arrival order is kept), or None when full."""
        line = self._lines.setdefault(key, deque())
        if len(line) > self._max_waiting:  # one running + max_waiting waiting
            return None
        ticket = Ticket(self, key)
        line.append(ticket)
        if len(line) == 1:
            ticket._turn.set_result(None)
        return ticket

    def busy(self, key: K) -> bool:
        return bool(self._lines.get(key))

    def waiting(self, key: K) -> int:
        return max(0, len(self._lines.get(key, ())) - 1)

    def _leave(self, ticket: Ticket[K]) -> None:
        line = self._lines.get(ticket.key)
        if line is None or ticket not in line:
            return
        was_first = line[0] is ticket
        line.remove(ticket)
        if not line:
            del self._lines[ticket.key]
        elif was_first and not line[0]._turn.done():
            line[0]._turn.set_result(None)

    def drop(self, key: K) -> None:
        """Fail every waiting ticket of ``key`` with :class:`LineDroppedError`."""
        for ticket in list(self._lines.get(key, ()))[1:]:
            if not ticket._turn.done():
                ticket._turn.set_exception(LineDroppedError())


class KeyedLock(Generic[K]):
    """asyncio locks by key, created on demand and dropped when free.

    Used to keep a conversation's prompts in arrival order through the few awaits
    (the rate-limit check) that come before they take their place in the line.
    """

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
