"""A file rewritten every few seconds by the event loop: proof that the bot is alive.

``python -m bot.healthcheck`` (the container's HEALTHCHECK) checks the file's age. The
rewrite runs as a task on the bot's own event loop, so a loop that is blocked or dead
stops refreshing the file, while a process that merely still exists does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from bot.tasks import stop_task

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    """``start()`` writes ``path`` at once and then every ``interval`` seconds (content: the
    current unix time); ``stop()`` ends that and removes the file."""

    def __init__(self, path: Path, interval: float = 15.0) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.path = path
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        if self._task is not None:
            return
        self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def beat(self) -> None:
        """Write the file now. A failure is logged (once until it works again), never
        raised: a broken heartbeat makes the container unhealthy, not the bot crash."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{time.time():.3f}\n", encoding="ascii")
            tmp.replace(self.path)  # atomic: a reader never sees a half-written file
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._failing:
                log.warning("cannot write the heartbeat file %s: %s", self.path, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeat file %s written again", self.path)
            self._failing = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.beat()
