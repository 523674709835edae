"""Conversations' lines in Redis, shared by every replica (see ``line.py`` for the rules).

A running answer holds a **lease**: its ticket in ``running`` with a deadline that
the holder pushes back every ``lease / 3`` seconds. A waiting prompt has its place
in ``waiting``, ranked by its message id, and a deadline of its own in ``alive``
that its owner pushes back each time it looks whether its turn came. A replica that
dies stops pushing: its leases and places lapse after ``lease`` seconds and the
next script that touches the line purges them, so nothing stays locked. A Redis
that answers nobody for longer than a lease (a stall, a failover) makes the places
of live owners lapse too: an owner that finds its place gone, and not dropped,
takes it again by its message id, so no waiting prompt is lost to a stall.

Every change goes through one Lua script (enter, try-start, renew, leave, drop), so
two replicas never both take the last free place. A waiting ticket never gets its
turn handed to it: its owner *takes* it (try-start) when the rules allow, so no
lease is ever granted to a process that is not there to use it. Owners learn that
their turn may have come from a message on ``P:line`` (published when a ticket
leaves or a lapsed one is purged), and look anyway every ``lease / 3`` seconds, or
at the moment the first running lease would lapse, whichever is sooner — that
bounds the hand-over after a crash by about one lease.

Messages on their way count too. Telegram sends a chat's next update once the
previous one was answered, but a replica answers at once and processes after, so
the next message, on another replica, could take its place first. So a replica
registers each message in ``arriving`` as it receives it (before answering
Telegram), and a waiting ticket does not start while an earlier message of its
conversation is still on its way: until that one takes its place (``enter``
removes it), is withdrawn (it was not a prompt), or lapses with its replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from bot.storage.keys import Keys

from .line import HandedOverError, LineDroppedError
from .pubsub import Subscriber

__all__ = ["DEFAULT_LEASE", "RedisLine", "RedisTicket"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

DEFAULT_LEASE: Final = 15.0  # seconds a silent holder keeps its place

# KEYS = running, waiting, alive, senders, arriving; ARGV[1..3] = channel, conversation,
# lease (ms).
_PRELUDE: Final = """
local running, waiting, alive, senders, arriving = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function notify() redis.call('PUBLISH', ARGV[1], ARGV[2]) end
local function forget(ticket)
  redis.call('ZREM', alive, ticket)
  redis.call('HDEL', senders, ticket)
end
-- A dropped waiting ticket's sender, until its owner looks again and leaves: tells a
-- drop from a place that lapsed.
local DROPPED = ''
-- Leases, places and arrivals whose owners stopped pushing their deadlines back.
local function purge()
  local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', now)
  for _, ticket in ipairs(lapsed) do redis.call('ZREM', running, ticket); forget(ticket) end
  local late = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
  for _, ticket in ipairs(late) do redis.call('ZREM', waiting, ticket); forget(ticket) end
  local lost = redis.call('ZREMRANGEBYSCORE', arriving, '-inf', now)
  if #lapsed + #late + lost > 0 then notify() end
end
-- A message that was on its way takes its place, or none: later ones may go.
local function arrived(message)
  if redis.call('ZREM', arriving, message) > 0 and redis.call('ZCARD', waiting) > 0 then
    notify()
  end
end
-- Every key outlives the deadlines in it, and no longer.
local function keep()
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, 2 * lease + 1000) end
end
-- Would `ticket` start now? Line._advance's rule: waiting tickets start in order
-- while places are free, each behind its own asker's running (or earlier) ticket;
-- and none before an earlier message on its way has its place.
local function eligible(ticket, max_running)
  local order = tonumber(redis.call('ZSCORE', waiting, ticket))
  for _, message in ipairs(redis.call('ZRANGE', arriving, 0, -1)) do
    if tonumber(message) < order then return false end
  end
  local ran = redis.call('ZRANGE', running, 0, -1)
  local free = max_running - #ran
  local busy = {}
  for _, other in ipairs(ran) do busy[redis.call('HGET', senders, other) or ''] = true end
  for _, other in ipairs(redis.call('ZRANGE', waiting, 0, -1)) do
    if free <= 0 then return false end
    local sender = redis.call('HGET', senders, other) or ''
    if not busy[sender] then
      if other == ticket then return true end
      busy[sender] = true
      free = free - 1
    end
  end
  return false
end
local function start(ticket)
  redis.call('ZREM', waiting, ticket)
  redis.call('ZREM', alive, ticket)
  redis.call('ZADD', running, now + lease, ticket)
end
"""

# ARGV[4..8] = ticket, sender, order ('' = after the last waiting), max running,
# max waiting. Returns 0 (full), 1 (waiting) or 2 (running).
_ENTER: Final = (
    _PRELUDE
    + """
purge()
local ticket, sender = ARGV[4], ARGV[5]
local max_running, max_waiting = tonumber(ARGV[7]), tonumber(ARGV[8])
local order = tonumber(ARGV[6])
if order then arrived(ARGV[6]) end
if redis.call('ZCARD', waiting) >= max_waiting then
  -- Full, unless this one would start at once.
  if redis.call('ZCARD', running) >= max_running then return 0 end
  for _, held in ipairs(redis.call('HVALS', senders)) do
    if held == sender then return 0 end
  end
end
if not order then
  local last = redis.call('ZRANGE', waiting, -1, -1, 'WITHSCORES')
  order = last[2] and tonumber(last[2]) + 1 or 0
end
redis.call('ZADD', waiting, order, ticket)
redis.call('ZADD', alive, now + lease, ticket)
redis.call('HSET', senders, ticket, sender)
local status = 1
if eligible(ticket, max_running) then
  start(ticket)
  status = 2
end
keep()
return status
"""
)

# ARGV[4..7] = ticket, max running, sender, order ('' = after the last waiting).
# Returns {status, ms, taken again}: status 2 (running), -1 (dropped) or 1 (waiting;
# ms until the first running lease lapses); taken again 1 when its place had lapsed.
_TRY_START: Final = (
    _PRELUDE
    + """
purge()
local ticket = ARGV[4]
if redis.call('ZSCORE', running, ticket) then return {2, 0, 0} end
local again = 0
if not redis.call('ZSCORE', waiting, ticket) then
  if redis.call('HGET', senders, ticket) == DROPPED then return {-1, 0, 0} end
  -- Its place lapsed although its owner is here: Redis answered nobody for longer
  -- than the lease. The place is taken again, where its order puts it: the prompt
  -- was let in once, so the line may be longer than max waiting for a while.
  local order = tonumber(ARGV[7])
  if not order then
    local last = redis.call('ZRANGE', waiting, -1, -1, 'WITHSCORES')
    order = last[2] and tonumber(last[2]) + 1 or 0
  end
  redis.call('ZADD', waiting, order, ticket)
  redis.call('HSET', senders, ticket, ARGV[6])
  again = 1
end
if eligible(ticket, tonumber(ARGV[5])) then
  start(ticket)
  keep()
  return {2, 0, again}
end
redis.call('ZADD', alive, now + lease, ticket)
keep()
local first = redis.call('ZRANGE', running, 0, 0, 'WITHSCORES')
if first[2] then return {1, math.max(0, tonumber(first[2]) - now), again} end
return {1, lease, again}
"""
)

# ARGV[4] = ticket. 1 while the lease is ours. A lease that lapsed but was not purged
# yet is revived: nobody can have started in its place.
_RENEW: Final = (
    _PRELUDE
    + """
if not redis.call('ZSCORE', running, ARGV[4]) then return 0 end
redis.call('ZADD', running, now + lease, ARGV[4])
keep()
return 1
"""
)

_LEAVE: Final = (
    _PRELUDE
    + """
local was = redis.call('ZREM', running, ARGV[4]) + redis.call('ZREM', waiting, ARGV[4])
forget(ARGV[4])
if was > 0 then notify() end
return was
"""
)

_DROP: Final = (
    _PRELUDE
    + """
purge()
local dropped = redis.call('ZRANGE', waiting, 0, -1)
for _, ticket in ipairs(dropped) do
  redis.call('ZREM', alive, ticket)
  redis.call('HSET', senders, ticket, DROPPED)
end
redis.call('DEL', waiting)
if #dropped > 0 then notify() end
return #dropped
"""
)

# ARGV[4] = ticket. Its new owner looks after it from now: {status, sender, order},
# status 2 (running), 1 (waiting), or 0 (gone: it lapsed or was dropped).
_ADOPT: Final = (
    _PRELUDE
    + """
purge()
local ticket = ARGV[4]
local status = 0
if redis.call('ZSCORE', running, ticket) then
  redis.call('ZADD', running, now + lease, ticket)
  status = 2
elseif redis.call('ZSCORE', waiting, ticket) then
  redis.call('ZADD', alive, now + lease, ticket)
  status = 1
else
  forget(ticket)  -- a dropped one's mark, as its first owner will not leave it
end
keep()
local sender = redis.call('HGET', senders, ticket) or ''
return {status, sender, redis.call('ZSCORE', waiting, ticket) or ''}
"""
)

# ARGV[4] = message id.
_ARRIVE: Final = (
    _PRELUDE
    + """
redis.call('ZADD', arriving, now + lease, ARGV[4])
redis.call('PEXPIRE', arriving, 2 * lease + 1000)
return 1
"""
)

# ARGV[4] = message id.
_WITHDRAW: Final = (
    _PRELUDE
    + """
arrived(ARGV[4])
return 1
"""
)

_COUNTS: Final = (
    _PRELUDE
    + """
purge()
return {redis.call('ZCARD', running), redis.call('ZCARD', waiting)}
"""
)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisTicket(Generic[K]):
    """A place in a shared line. From creation, a background task looks after it:
    while it waits, it tries to start (pushing its place's deadline back); once it
    runs, it renews the lease until the ticket is given up — or handed over to
    another replica (:meth:`hand_over`), which then looks after it."""

    def __init__(
        self,
        line: RedisLine[K],
        key: K,
        ticket_id: str,
        *,
        running: bool,
        sender: str,
        order: str | int,
    ) -> None:
        self._line, self.key, self.id = line, key, ticket_id
        # Where the place is, to take it again should it lapse while Redis stalls.
        self._sender, self._order = sender, order
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()
        if running:
            self._turn.set_result(None)
        self._left: asyncio.Future[None] | None = None
        self._paused = False
        self._keeper = asyncio.create_task(self._keep())

    @property
    def _looking(self) -> bool:
        return self._left is None and not self._paused

    async def hand_over(
        self, send: Callable[[], Awaitable[None]], *, if_waiting: bool = False
    ) -> bool:
        """Give the place to another replica: stop looking after it (it stays in the
        line), ``await send()`` (which tells the others this ticket's id), and from
        then on neither renew nor leave it. A holder still waiting for its turn gets
        :class:`HandedOverError`. With ``if_waiting``, a ticket whose turn has come
        is kept (False). When ``send`` fails, the ticket is looked after again and
        the error propagates."""
        if self._left is not None or self._paused:  # gone, or being handed over already
            return False
        self._paused = True
        # redis-py may swallow the cancellation mid-command: the keeper also stops
        # at its next look, as it is paused.
        self._keeper.cancel()
        await asyncio.wait({self._keeper})
        if if_waiting and self._turn.done():
            self._resume()
            return False
        try:
            await send()
        except BaseException:
            self._resume()
            raise
        self._left = asyncio.get_running_loop().create_future()
        self._left.set_result(None)  # nothing to give up: the place is the new owner's
        if not self._turn.done():
            self._turn.set_exception(HandedOverError())
            self._turn.exception()  # retrieved: __aenter__ may never come
        return True

    def _resume(self) -> None:
        self._paused = False
        self._keeper = asyncio.create_task(self._keep())

    async def __aenter__(self) -> Self:
        try:
            await asyncio.shield(self._turn)
        except BaseException:
            await self._leave()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._leave()

    async def _keep(self) -> None:
        line = self._line
        if not self._turn.done():
            line._waiters.setdefault(str(self.key), set()).add(self)
            try:
                await self._wait_for_turn()
            except Exception as exc:  # a bug: the holder must not wait forever
                log.exception("waiting in line failed")
                self._turn.set_exception(exc)
            finally:
                waiters = line._waiters.get(str(self.key), set())
                waiters.discard(self)
                if not waiters:
                    line._waiters.pop(str(self.key), None)
        if not self._turn.done() or self._turn.exception() is not None:
            return  # given up, dropped, failed or paused: no lease to keep
        while self._looking:
            await asyncio.sleep(line.lease / 3)
            try:
                if not await line._call(line._renew, self.key, self.id):
                    log.warning("the lease of an answer in %s lapsed before it ended", self.key)
                    return
            except RedisError as exc:  # the next renewal may work: the lease lasts 3 periods
                log.warning("line lease not renewed: Redis failed (%s)", exc)

    async def _wait_for_turn(self) -> None:
        line = self._line
        while self._looking:
            self._wake.clear()  # before looking: a notice that comes meanwhile is kept
            wait = line.lease / 3
            try:
                status, until_lapse, again = await line._call(
                    line._try_start,
                    self.key,
                    self.id,
                    line._limits(self.key)[0],
                    self._sender,
                    self._order,
                )
            except RedisError as exc:  # look again later: the place lasts 3 periods
                log.warning("line not checked: Redis failed (%s)", exc)
            else:
                if again:
                    log.warning(
                        "a prompt waiting in %s lost its place in line (Redis answered "
                        "nobody for longer than the lease); it took the place again",
                        self.key,
                    )
                if status == 2:
                    self._turn.set_result(None)
                    return
                if status == -1:
                    self._turn.set_exception(LineDroppedError())
                    self._turn.exception()  # retrieved: __aenter__ may never come
                    return
                wait = min(wait, until_lapse / 1000 + 0.005)
            # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that
            # lands as the event is set, and the keeper would outlive its ticket.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _leave(self) -> None:
        # Shielded: a second cancellation must not leave the place taken until it lapses.
        if self._left is None:
            self._left = asyncio.create_task(self._give_up())
        await asyncio.shield(self._left)

    async def _give_up(self) -> None:
        # redis-py may swallow a cancellation that lands mid-command: the keeper
        # also stops at its next look, as _left is set.
        self._keeper.cancel()
        await asyncio.wait({self._keeper})
        try:
            await self._line._call(self._line._leave, self.key, self.id)
        except RedisError as exc:  # it lapses by itself
            log.warning("line place not given up: Redis failed (%s)", exc)


class RedisLine(Generic[K]):
    """Per-key lines in Redis (see the module docstring); ``limits(key)`` gives a
    key's ``(max_running, max_waiting)``, like :class:`~bot.conversation.line.Line`.

    ``subscriber`` must be started for waiters to learn of turns at once; without
    it they still look every ``lease / 3`` seconds.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        subscriber: Subscriber,
        max_waiting: int = 3,
        max_running: int = 1,
        *,
        limits: Callable[[K], tuple[int, int]] | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self._redis, self._keys, self.lease = redis, keys, lease
        self._limits = limits or (lambda _key: (max_running, max_waiting))
        self._waiters: dict[str, set[RedisTicket[K]]] = {}
        self._enter = redis.register_script(_ENTER)
        self._try_start = redis.register_script(_TRY_START)
        self._renew = redis.register_script(_RENEW)
        self._leave = redis.register_script(_LEAVE)
        self._drop = redis.register_script(_DROP)
        self._counts = redis.register_script(_COUNTS)
        self._adopt = redis.register_script(_ADOPT)
        self._arrive = redis.register_script(_ARRIVE)
        self._withdraw = redis.register_script(_WITHDRAW)
        subscriber.on(keys.line_channel, self._moved)

    def _moved(self, conversation: bytes) -> None:
        for ticket in self._waiters.get(conversation.decode(), ()):
            ticket._wake.set()

    async def _call(self, script: AsyncScript, key: K, *args: str | int) -> Any:
        lease_ms = max(1, round(self.lease * 1000))
        conversation = str(key)
        return await script(
            keys=list(self._keys.line(conversation)),
            args=[self._keys.line_channel, conversation, lease_ms, *args],
        )

    async def enter(
        self, key: K, sender: Hashable = None, *, order: int | None = None
    ) -> RedisTicket[K] | None:
        max_running, max_waiting = self._limits(key)
        ticket_id = secrets.token_hex(8)
        place = "" if order is None else order
        status = await self._call(
            self._enter, key, ticket_id, str(sender), place, max_running, max_waiting
        )
        if status == 0:
            return None
        return RedisTicket(
            self, key, ticket_id, running=status == 2, sender=str(sender), order=place
        )

    async def drop(self, key: K) -> None:
        await self._call(self._drop, key)

    async def adopt(self, key: K, ticket_id: str) -> RedisTicket[K] | None:
        """Look after a place another replica handed over (:meth:`RedisTicket.hand_over`);
        None when it is gone (it lapsed meanwhile, or the line was dropped)."""
        status, sender, order = await self._call(self._adopt, key, ticket_id)
        if status == 0:
            return None
        return RedisTicket(
            self, key, ticket_id, running=status == 2, sender=_text(sender), order=_text(order)
        )

    async def arrive(self, key: K, order: int) -> None:
        """Message ``order`` of ``key`` reached a replica: prompts ordered after it
        wait (on every replica) until it takes its place or is withdrawn."""
        await self._call(self._arrive, key, order)

    async def withdraw(self, key: K, order: int) -> None:
        """Message ``order`` will not take a place (it was no prompt, or waits aside)."""
        await self._call(self._withdraw, key, order)

    async def counts(self, key: K) -> tuple[int, int]:
        running, waiting = await self._call(self._counts, key)
        return int(running), int(waiting)
