"""Stopping the background tasks that services keep (renewals, probes, listeners)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["stop_task"]

# Seconds between two cancellations of a task that has not ended.
CANCEL_AGAIN = 1.0


async def stop_task(task: asyncio.Task[Any] | None, *, again: float = CANCEL_AGAIN) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    One cancellation is not always enough: a library call the task awaits may swallow it
    (seen once in CI: the journal sweep went back to its sleep, "cancelling" forever, and
    the shutdown waited for it for good). So a task still running ``again`` seconds after
    a cancellation is cancelled once more, until it ends.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=again)
    with contextlib.suppress(asyncio.CancelledError):
        await task
