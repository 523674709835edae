"""Commands for the running answers of every replica: ``/stop``, ``/new``, a Stop button.

An answer runs in the process that took its lease, which need not be the one that
got the command. A command is a small JSON-able dict whose ``op`` names what to do
(``stop``, ``reset``, ``stop_answer``…); every replica applies it to its own running
answers through the handler registered for that ``op``, and :meth:`Control.send`
returns the sum of what the handlers returned (the number of answers they stopped),
so that the sender can tell the user "nothing to stop".

:class:`LocalControl` calls this process's handler. :class:`RedisControl` publishes
on ``P:control``; each replica's subscriber applies the command and pushes its count
to a reply list named in the command. ``PUBLISH`` says how many replicas heard it,
so the sender waits for exactly that many counts (at most ``reply_timeout``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.storage.keys import Keys

from .pubsub import Subscriber

__all__ = ["Command", "Control", "Handler", "LocalControl", "RedisControl"]

log = logging.getLogger(__name__)

Command = dict[str, Any]
Handler = Callable[[Command], Awaitable[int]]

REPLY_TIMEOUT: Final = 2.0  # seconds to wait for the replicas' counts
REPLY_TTL: Final = 30  # seconds a reply list outlives a sender that went away


class Control(Protocol):
    def on(self, op: str, handler: Handler) -> None:
        """Apply commands ``op`` to this process's answers with ``handler``."""
        ...

    async def send(self, op: str, **fields: Any) -> int:
        """Apply a command in every replica; the sum of the handlers' results."""
        ...


class _Handlers:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def on(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    async def _apply(self, command: Command) -> int:
        handler = self._handlers.get(str(command.get("op")))
        if handler is None:  # a newer replica's command: nothing of it runs here
            return 0
        return await handler(command)


class LocalControl(_Handlers):
    """One process: commands are applied here and now."""

    async def send(self, op: str, **fields: Any) -> int:
        return await self._apply({"op": op, **fields})


class RedisControl(_Handlers):
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriber: Subscriber,
        *,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        super().__init__()
        self._redis, self._keys, self._reply_timeout = redis, keys, reply_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        subscriber.on(keys.control_channel, self._received)

    async def send(self, op: str, **fields: Any) -> int:
        reply = self._keys.control_reply(secrets.token_hex(8))
        command = {"op": op, **fields, "reply": reply}
        heard: int = await self._redis.publish(self._keys.control_channel, json.dumps(command))
        total = 0
        deadline = time.monotonic() + self._reply_timeout
        for _ in range(heard):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            popped = await self._redis.blpop([reply], timeout=left)
            if popped is None:
                log.warning("a replica did not confirm a %s command in time", op)
                break
            total += int(popped[1])
        return total

    def _received(self, data: bytes) -> None:
        try:
            command = json.loads(data)
        except ValueError:
            log.warning("ignoring a malformed control message")
            return
        if not isinstance(command, dict):
            return
        task = asyncio.create_task(self._apply_and_reply(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_and_reply(self, command: Command) -> None:
        try:
            count = await self._apply(command)
        except Exception:
            log.exception("control command %s failed", command.get("op"))
            count = 0
        reply = command.get("reply")
        if not isinstance(reply, str) or not reply.startswith(self._keys.control_reply("")):
            return  # only ever push to a reply list
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(reply, count)
                pipe.expire(reply, REPLY_TTL)
                await pipe.execute()
        except RedisError as exc:  # the sender stops waiting after its timeout
            log.warning("control reply not sent: Redis failed (%s)", exc)
