"""Event-loop lag: how late a periodic timer fires.

Everything the bot does runs on one event loop, so any callback that holds it (a long
render, a garbage collection, too many streams at once) delays every answer, every
edit and every timer. A timer that should fire every ``interval`` seconds measures that
delay directly; the last ``window`` delays give p50/p99/max for ``/stats`` and metrics.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bot.tasks import stop_task

__all__ = ["LagProbe", "LagSnapshot"]


@dataclass(frozen=True)
class LagSnapshot:
    """Delays in seconds over the last ``samples`` ticks (NaN when there are none)."""

    p50: float
    p99: float
    max: float
    samples: int


class LagProbe:
    """``start()`` begins ticking every ``interval`` seconds on the running loop,
    ``stop()`` ends it; :meth:`snapshot` reads the sliding window at any time."""

    def __init__(
        self,
        interval: float = 0.1,
        window: int = 600,
        *,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        if not interval > 0 or window < 1:
            raise ValueError("interval must be positive and window at least 1")
        self.interval = interval
        self._on_sample = on_sample  # e.g. the metrics' histogram
        self._delays: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    @property
    def window_seconds(self) -> float:
        return self.interval * (self._delays.maxlen or 0)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def snapshot(self) -> LagSnapshot:
        ordered = sorted(self._delays)
        if not ordered:
            return LagSnapshot(math.nan, math.nan, math.nan, 0)
        return LagSnapshot(_rank(ordered, 50), _rank(ordered, 99), ordered[-1], len(ordered))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            delay = max(0.0, loop.time() - due)
            self._delays.append(delay)
            if self._on_sample is not None:
                self._on_sample(delay)


def _rank(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
