"""Prompts a stopping replica hands to the others, with their places in the line.

On SIGTERM a replica finishes the answers it is writing (``SHUTDOWN_TIMEOUT``), but a
prompt still waiting for its turn may wait as long as another replica's answer takes.
It goes to the replicas that stay instead: its ticket stops being looked after here
(it keeps its place in the shared line), the prompt is pushed on ``P:handback`` and
announced on pub/sub, and the first replica that pops it adopts the ticket and
answers in its turn. When no replica takes it within a lease (all of them
restarting), the place lapses and whoever starts next answers it with a new place,
still ranked by its message id.

The payload is opaque here (the answerer's JSON). A replica that stops taking
(draining) pushes back what it popped meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.storage.keys import ConversationKey, Keys

from .pubsub import Subscriber
from .redis_line import RedisLine, RedisTicket

__all__ = ["HandBacks"]

log = logging.getLogger(__name__)

TTL: Final = 24 * 3600  # seconds the list outlives its last push, for a bot that is down

# KEYS = list; ARGV = payload, channel, ttl.
_PUSH: Final = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[2], '')
"""


class HandBacks:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriber: Subscriber,
        line: RedisLine[ConversationKey],
        *,
        interval: float,
    ) -> None:
        self._redis, self._keys, self._line = redis, keys, line
        self._interval = interval  # looks anyway this often: pub/sub may miss a notice
        self._push = redis.register_script(_PUSH)
        self._wake = asyncio.Event()
        self._taking = False
        self._task: asyncio.Task[None] | None = None
        subscriber.on(keys.handback_channel, lambda _data: self._wake.set())

    async def hand_back(
        self, ticket: object, payload: Callable[[str], str], *, if_waiting: bool
    ) -> bool:
        """Hand ``ticket`` and its prompt (``payload(ticket id)``) to the other
        replicas (with ``if_waiting``, only while it waits for its turn). False
        when it stays here: its turn came first, it is not a place in the shared
        line, or Redis failed."""
        if not isinstance(ticket, RedisTicket):
            return False
        try:
            return await ticket.hand_over(
                lambda: self.push(payload(ticket.id)), if_waiting=if_waiting
            )
        except RedisError as exc:
            log.warning("prompt not handed back: Redis failed (%s)", exc)
            return False

    async def push(self, payload: str) -> None:
        await self._push(
            keys=[self._keys.handback], args=[payload, self._keys.handback_channel, TTL]
        )

    async def adopt(
        self, conversation: ConversationKey, ticket_id: str
    ) -> RedisTicket[ConversationKey] | None:
        return await self._line.adopt(conversation, ticket_id)

    def start(self, take: Callable[[str], None]) -> None:
        """Pop what is handed back, now and whenever more comes, and ``take`` it
        (``take`` must not block: it starts a task)."""
        self._taking = True
        self._task = asyncio.create_task(self._run(take))

    async def stop(self) -> None:
        """Take no more. An item popped meanwhile still goes to ``take``."""
        self._taking = False
        self._wake.set()
        if self._task is not None:
            # Not cancelled: a pop the cancellation cut short could lose its item.
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self, take: Callable[[str], None]) -> None:
        while self._taking:
            self._wake.clear()  # before looking: a notice that comes meanwhile is kept
            try:
                while self._taking and (raw := await self._redis.lpop(self._keys.handback)):
                    take(raw.decode() if isinstance(raw, bytes) else str(raw))
            except RedisError as exc:
                log.warning("handed-back prompts not taken: Redis failed (%s)", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
