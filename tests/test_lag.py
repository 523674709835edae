"""The event-loop lag probe: a periodic timer's delay, over a sliding window."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from bot.lag import LagProbe


async def test_a_blocked_loop_shows_as_lag() -> None:
    probe = LagProbe(interval=0.01, window=1_000)
    await probe.start()
    try:
        await asyncio.sleep(0.3)
        time.sleep(0.25)  # noqa: ASYNC251 — hold the loop, as a long render or a full GC would
        await asyncio.sleep(0.3)
    finally:
        await probe.stop()
    shot = probe.snapshot()
    assert shot.samples >= 5
    assert shot.max >= 0.2  # the tick that was due during the block came that late
    assert shot.p50 < shot.max  # most ticks were not blocked
    assert shot.p50 <= shot.p99 <= shot.max


async def test_the_window_keeps_only_the_newest_delays() -> None:
    probe = LagProbe(interval=0.01, window=5)
    await probe.start()
    try:
        time.sleep(0.2)  # noqa: ASYNC251 — a blocked loop
        await asyncio.sleep(0.3)  # ≥ 5 unblocked ticks after the blocked one
    finally:
        await probe.stop()
    shot = probe.snapshot()
    assert shot.samples == 5
    assert shot.max < 0.2


async def test_no_samples_before_it_runs_and_none_after_stop() -> None:
    probe = LagProbe(interval=0.01)
    assert math.isnan(probe.snapshot().p99)
    assert probe.snapshot().samples == 0
    await probe.start()
    await asyncio.sleep(0.1)
    await probe.stop()
    count = probe.snapshot().samples
    await asyncio.sleep(0.1)
    assert probe.snapshot().samples == count > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        LagProbe(interval=0)
    with pytest.raises(ValueError, match="window"):
        LagProbe(window=0)
