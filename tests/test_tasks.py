"""bot/tasks.py: stopping a background task, even one that swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bot.tasks import stop_task


async def test_a_task_that_swallows_the_first_cancellation_is_still_stopped() -> None:
    sleeps = 0

    async def keep_going() -> None:
        nonlocal sleeps
        # What a library that swallows a cancellation leaves behind: the loop goes on, to
        # its next sleep, which a second cancellation ends.
        with contextlib.suppress(asyncio.CancelledError):
            sleeps += 1
            await asyncio.sleep(3600)
        while True:
            sleeps += 1
            await asyncio.sleep(3600)

    task = asyncio.create_task(keep_going())
    await asyncio.sleep(0)  # it starts its first sleep
    await asyncio.wait_for(stop_task(task, again=0.05), timeout=30)
    assert task.done()
    assert sleeps >= 2  # the first cancellation was swallowed


async def test_a_plain_task_is_stopped_with_one_cancellation() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()
    await stop_task(None)  # nothing to stop


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await stop_task(task)
