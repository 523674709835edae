"""One Redis pub/sub connection per process, shared by everything that listens.

Replicas tell each other that a conversation's line moved, that a paste got a
piece, or that an answer is to be stopped. Each listener registers a channel and
a callback; the callbacks run on the event loop and must not block (they set an
event or start a task). A message lost while the connection is down is covered by
the listeners' own periodic re-checks: pub/sub only makes things faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.tasks import stop_task

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)

POLL: Final = 1.0  # seconds a read waits for a message before looking again
RETRY: Final = 1.0  # seconds between reconnection attempts while Redis is down
READY_TIMEOUT: Final = 10.0


class Subscriber:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._callbacks: dict[str, list[Callable[[bytes], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def on(self, channel: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(data)`` for every message on ``channel``. A channel added
        while running is subscribed to in the background (see :meth:`ready`)."""
        new = channel not in self._callbacks
        self._callbacks.setdefault(channel, []).append(callback)
        if new and self._task is not None:
            self._task.cancel()  # it also ends by itself, now that it is not current
            self._subscribed.clear()
            self._task = asyncio.create_task(self._run())

    async def start(self) -> None:
        """Subscribe; returns once the subscription is active (or failed: then it
        keeps trying in the background)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await self.ready()

    async def ready(self) -> bool:
        """Wait until every channel is subscribed to; False after ``READY_TIMEOUT``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_TIMEOUT):
                await self._subscribed.wait()
        return self._subscribed.is_set()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        # redis-py's reads may swallow a cancellation (asyncio.wait_for on 3.11): a
        # task that is no longer the current one also ends at its next look.
        me = asyncio.current_task()
        while me is self._task:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                if self._callbacks:
                    await pubsub.subscribe(*self._callbacks)
                self._subscribed.set()
                while me is self._task:
                    message = await pubsub.get_message(timeout=POLL)
                    if message is not None:
                        self._deliver(message)
                    if not self._callbacks:
                        await asyncio.sleep(POLL)  # nothing to read yet
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            if me is self._task:
                await asyncio.sleep(RETRY)

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        data = message["data"]
        payload = data if isinstance(data, bytes) else str(data).encode()
        for callback in self._callbacks.get(name, ()):
            try:
                callback(payload)
            except Exception:  # one listener's bug must not silence the others
                log.exception("pub/sub listener failed on %s", name)
