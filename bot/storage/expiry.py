"""A map whose entries expire a fixed time after their last write (the in-memory stores' TTL).

Every entry lives for the same ``ttl``, so the order of last writes *is* the order of
expiry: an ``OrderedDict`` kept in last-write order (``move_to_end`` on each write) has
the next entry to expire at its front. Each write first pops the expired entries off
the front and stops at the first live one, so it examines one entry plus those it
removes; every entry is removed at most once per write that stored it, hence amortized
O(1) per write and no entry outlives its expiry by more than the time to the next write.

A heap of expiry times would do the same in O(log n) per write, and would pile up
stale heap items for entries written again (each rewrite adds one); the TTL being the
same for all entries is what makes the plain ordered map enough. That holds only on a
clock that never goes back (``time.monotonic``): on a wall clock an entry at the front
could expire later than one behind it, which would only delay its removal.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ExpiringMap"]

K = TypeVar("K")
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        # Entries looked at by the expiry sweeps, so tests and benchmarks can check
        # the cost per write without timing it.
        self.examined = 0

    def get(self, key: K) -> V | None:
        """The live value of ``key``; reading does not extend its life."""
        entry = self._live(key)
        return None if entry is None else entry[1]

    def __contains__(self, key: K) -> bool:
        return self._live(key) is not None

    def _live(self, key: K) -> tuple[float, V] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry

    def put(self, key: K, value: V) -> None:
        """Store ``value`` for ``ttl`` seconds from now, and drop what has expired."""
        now = self._clock()
        self._sweep(now)
        self._entries[key] = (now + self._ttl, value)
        self._entries.move_to_end(key)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def _sweep(self, now: float) -> None:
        entries = self._entries
        while entries:
            self.examined += 1
            key, (expires, _) = next(iter(entries.items()))
            if expires > now:
                return
            del entries[key]

    def __len__(self) -> int:
        """Entries held, including expired ones not swept yet (none older than the last write)."""
        return len(self._entries)
