"""Where the GPTalk bearer token and its use count live.

A token may be used ``max_uses`` times (GPTalk's quota per login). Stores hand out
*reservations*: :meth:`TokenStore.acquire` returns a token with one use already
counted, so concurrent requests can never push the count past the limit (the
original provider's bug: two requests reading ``used_times == 4`` both used the
token, the count went to 6, and ``== 5`` never fired again).

Two stores share one algorithm (:class:`_BatchingStore`):

* :class:`MemoryTokenStore` keeps the token in process memory.
* :class:`RedisTokenStore` keeps it in Redis so that every process shares one
  token; a use is reserved by a Lua script and only the holder of a lock key logs
  in, so N requests cost exactly ``ceil(N / max_uses)`` logins across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import APITimeoutError, TokenStoreError

__all__ = [
    "AuthHolder",
    "LoginFn",
    "LoginResult",
    "MemoryTokenStore",
    "RedisTokenStore",
    "TokenStatus",
    "TokenStore",
]

log = logging.getLogger("gptalk.auth")


@dataclass(frozen=True, repr=False)
class LoginResult:
    """A successful login: the token, its expiry and the whole ``data`` object."""

    token: str
    expires_at: int
    data: dict[str, Any]

    def __repr__(self) -> str:  # the token must not end up in logs through a repr
        return f"LoginResult(token=***, expires_at={self.expires_at})"


LoginFn = Callable[[], Awaitable[LoginResult]]


@dataclass(frozen=True)
class TokenStatus:
    """What an operator may know about the shared token (never the token itself)."""

    has_token: bool
    obtained_at: float | None
    expires_at: int | None
    uses: int
    max_uses: int

    @property
    def uses_left(self) -> int:
        return max(self.max_uses - self.uses, 0) if self.has_token else 0

    def is_expired(self, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at < int(time.time() if now is None else now)


class TokenStore(Protocol):
    """Storage of the shared GPTalk token and its use count."""

    async def acquire(self, login: LoginFn, *, max_uses: int) -> str:
        """Return a token with one of its ``max_uses`` uses reserved for the caller.

        Calls ``login`` (in one place at a time) when there is no token, it has
        expired or its uses are spent. A reservation stays spent even if the
        request made with it fails.
        """
        ...

    async def invalidate(self, token: str | None = None) -> bool:
        """Forget the token so that the next request logs in anew.

        With ``token``, only when it is still the current one (a stale rejection
        must not throw away a token another request has just obtained). Returns
        whether a token was dropped.
        """
        ...

    async def status(self) -> TokenStatus:
        """Describe the current token."""
        ...


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[str]
    login: LoginFn
    max_uses: int


class _Waiters:
    """The coroutines of one event loop waiting for a token, in arrival order, and the
    one task that serves them."""

    def __init__(self) -> None:
        self.queue: deque[_Waiter] = deque()
        self.server: asyncio.Task[None] | None = None
        self.waiting_since: float | None = None  # waiting for another process's login

    def head(self) -> _Waiter | None:
        while self.queue and self.queue[0].future.done():  # cancelled meanwhile
            self.queue.popleft()
        return self.queue[0] if self.queue else None

    def wanted(self, limit: int) -> int:
        """How many uses to reserve: one per live waiter, at most ``limit``."""
        count = 0
        for waiter in self.queue:
            if not waiter.future.done():
                count += 1
                if count == limit:
                    break
        return count

    def hand_out(self, token: str, uses: int) -> None:
        while uses and self.queue:
            future = self.queue.popleft().future
            if not future.done():  # a use reserved for a waiter cancelled since stays spent
                future.set_result(token)
            uses -= 1

    def fail(self, exc: BaseException) -> None:
        while self.queue:
            future = self.queue.popleft().future
            if future.done():
                continue
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:  # the server task itself was cancelled (e.g. the loop is closing)
                future.cancel()


class _BatchingStore:
    """The acquire algorithm shared by both stores.

    Every ``acquire`` joins its event loop's FIFO of waiters; one task per loop serves
    that FIFO, reserving as many uses as there are waiters (up to ``max_uses``) in one
    storage call and handing them out in arrival order. When none are left it obtains
    a fresh token (one login at a time), reserving the uses for the waiters in the same
    step as it stores the token. So N concurrent requests cost O(N / max_uses) storage
    calls, and a failing login fails every waiter at once instead of being retried by
    each in turn.
    """

    def __init__(self) -> None:
        self._waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiters] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self, login: LoginFn, *, max_uses: int) -> str:
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        # Keyed by event loop: a store may outlive one asyncio.run() (the seed API's
        # class-level store does), and futures and tasks belong to one loop.
        loop = asyncio.get_running_loop()
        waiters = self._waiters.get(loop)
        if waiters is None:
            waiters = self._waiters[loop] = _Waiters()
        waiter = _Waiter(loop.create_future(), login, max_uses)
        waiters.queue.append(waiter)
        if waiters.server is None:
            waiters.server = loop.create_task(self._serve(waiters))
        # Cancelling this await cancels only our future; the server carries on for the others.
        return await waiter.future

    async def _serve(self, waiters: _Waiters) -> None:
        try:
            while (head := waiters.head()) is not None:
                await self._serve_head(waiters, head)
        except BaseException as exc:
            waiters.fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            # No await between the empty check and this: a waiter arriving later sees
            # no server and starts one.
            waiters.server = None
            waiters.waiting_since = None

    async def _serve_head(self, waiters: _Waiters, head: _Waiter) -> None:
        """Hand out at least one use, or wait until one may be available; raise to fail
        every waiter."""
        raise NotImplementedError


class AuthHolder(Protocol):
    """Anything with the seed API's two attributes, e.g. the ``GPTalk`` class itself."""

    _auth: dict[str, Any] | None
    used_times: int


class _Holder:
    def __init__(self) -> None:
        self._auth: dict[str, Any] | None = None
        self.used_times = 0


class MemoryTokenStore(_BatchingStore):
    """A token store in process memory.

    The state lives on ``holder`` as ``_auth`` (the login's ``data`` object) and
    ``used_times``: given the ``GPTalk`` class, the seed API's attributes *are* the
    store, so reading them shows the real state and ``GPTalk._auth = None`` forces
    a new login.
    """

    def __init__(
        self, holder: AuthHolder | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self._holder: AuthHolder = holder if holder is not None else _Holder()
        self._clock = clock
        self._obtained_at: float | None = None
        self._max_uses = 0

    def _uses_left(self, max_uses: int) -> tuple[str, int] | None:
        auth = self._holder._auth
        if not auth:
            return None
        token, expires_at = auth.get("token"), auth.get("expires_at")
        if not isinstance(token, str) or not isinstance(expires_at, int | float):
            return None
        if expires_at < int(self._clock()):
            return None
        left = max_uses - self._holder.used_times
        return (token, left) if left > 0 else None

    async def _serve_head(self, waiters: _Waiters, head: _Waiter) -> None:
        self._max_uses = head.max_uses
        usable = self._uses_left(head.max_uses)
        if usable is not None:
            token, left = usable
            uses = min(left, waiters.wanted(head.max_uses))
            self._holder.used_times += uses
            waiters.hand_out(token, uses)
            return
        result = await head.login()
        # The uses go to the waiters right away, whatever the token's expires_at says:
        # a token issued a moment ago is as fresh as it gets, even when clocks disagree.
        uses = waiters.wanted(head.max_uses)
        self._holder._auth = result.data
        self._holder.used_times = uses
        self._obtained_at = self._clock()
        waiters.hand_out(result.token, uses)

    async def invalidate(self, token: str | None = None) -> bool:
        auth = self._holder._auth
        if not auth or (token is not None and auth.get("token") != token):
            return False
        self._holder._auth = None
        self._holder.used_times = 0
        self._obtained_at = None
        return True

    async def status(self) -> TokenStatus:
        auth = self._holder._auth
        if not auth:
            return TokenStatus(False, None, None, 0, self._max_uses)
        expires_at = auth.get("expires_at")
        return TokenStatus(
            has_token=True,
            obtained_at=self._obtained_at,
            expires_at=int(expires_at) if isinstance(expires_at, int | float) else None,
            uses=self._holder.used_times,
            max_uses=self._max_uses,
        )


# How much longer than the longest possible login the lock lives: the login is cut
# off (APITimeoutError) after LOCK_MARGIN of it, the rest covers storing the token.
LOCK_MARGIN: Final = 0.25
LOCK_MIN_MARGIN: Final = 2.0

_GRANTED: Final = 1  # reply: token, uses granted
_LOCKED: Final = 2  # reply: nothing left; this caller now holds the login lock
_HELD: Final = 3  # reply: nothing left; another process logs in (its id, lock pttl in ms)

# KEYS = auth hash, lock; ARGV = now, max_uses, uses wanted, holder id, lock ttl in ms.
# Reserves up to the wanted number of uses of the current, unexpired token; when none
# are left, takes the login lock, or marks it (suffix ':w') so that its holder signals
# when done. The limit is the smaller of the caller's max_uses and the one stored at
# login, so processes configured differently still never overuse a token.
_RESERVE_OR_LOCK: Final = """
local v = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'uses', 'max_uses')
if v[1] and tonumber(v[2]) >= tonumber(ARGV[1]) then
  local limit = tonumber(ARGV[2])
  if v[4] and tonumber(v[4]) < limit then limit = tonumber(v[4]) end
  local n = math.min(limit - tonumber(v[3] or '0'), tonumber(ARGV[3]))
  if n > 0 then
    redis.call('HINCRBY', KEYS[1], 'uses', n)
    return {1, v[1], n}
  end
end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then return {2} end
local holder = redis.call('GET', KEYS[2])
local ttl = redis.call('PTTL', KEYS[2])
if string.sub(holder, -2) == ':w' then
  holder = string.sub(holder, 1, -3)
elseif ttl > 0 then
  redis.call('SET', KEYS[2], holder .. ':w', 'PX', ttl)
end
return {3, holder, ttl}
"""

# KEYS = lock, done list of this holder; ARGV[1] = holder id, ARGV[2] = signal ttl in ms.
# Only the holder may release the lock; if someone waits, one element in the done list
# wakes them (BLMOVE rotates it, so it wakes every waiter, and it expires on its own).
_RELEASE_LUA: Final = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. ':w' then redis.call('DEL', KEYS[1]) end
if held == ARGV[1] .. ':w' then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
"""
_RELEASE: Final = _RELEASE_LUA + "return 1\n"

# KEYS = lock, done list, auth hash; ARGV[1..2] as _RELEASE, then token, expires_at,
# uses already reserved, max_uses, obtained_at, milliseconds until expires_at. Stores
# the fresh token, to vanish when it expires (at once if it came expired), and releases.
_STORE: Final = (
    """
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'token', ARGV[3], 'expires_at', ARGV[4], 'uses', ARGV[5],
           'max_uses', ARGV[6], 'obtained_at', ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[8])
"""
    + _RELEASE
)

# KEYS[1] = auth hash; ARGV[1] = token ("" = whatever the current one is).
_INVALIDATE: Final = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisTokenStore(_BatchingStore):
    """A token store in Redis, shared by every process that uses the same ``prefix``.

    Keys: ``{prefix}:auth`` (hash: ``token``, ``expires_at``, ``uses``, ``max_uses``,
    ``obtained_at``; it expires at ``expires_at``), ``{prefix}:auth:lock`` (held, with
    an expiry, by the one process that is logging in) and, only while other processes
    wait for that login, ``{prefix}:auth:done:{holder}`` (a list that wakes them; it
    expires). Needs Redis 6.2 or newer (``BLMOVE``).

    ``connect_timeout`` and ``read_timeout`` are the GPTalk client's: a login takes at
    most their sum, and the lock lives longer than that (plus a margin), so a slow
    login never lets a second process log in too. The store cuts a login off before
    its lock could expire. ``lock_timeout`` can only lengthen the lock. Waiting for
    another process's login gives up after ``wait_timeout`` seconds (default: twice
    the lock's lifetime). ``poll_interval`` is accepted for compatibility and ignored:
    waiters block on a signal from the login's holder instead of polling.

    The Redis client is borrowed, not owned: closing it is the caller's job.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "gptalk",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        lock_timeout: float | None = None,
        wait_timeout: float | None = None,
        poll_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        del poll_interval
        self._redis = redis
        self.key = f"{prefix}:auth"
        self.lock_key = f"{prefix}:auth:lock"
        login_bound = connect_timeout + read_timeout
        margin = max(LOCK_MIN_MARGIN, LOCK_MARGIN * login_bound)
        self.login_timeout = login_bound + margin
        """Seconds after which the store gives up on a login it started."""
        self.lock_timeout = max(login_bound + 2 * margin, lock_timeout or 0.0)
        """Lifetime of the login lock, in seconds."""
        self._wait_timeout = wait_timeout if wait_timeout is not None else 2 * self.lock_timeout
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        # A blocking wait must end before the client's own socket timeout fires.
        self._max_block = socket_timeout / 2 if socket_timeout else 60.0
        self._clock = clock
        self._reserve_script = redis.register_script(_RESERVE_OR_LOCK)
        self._store_script = redis.register_script(_STORE)
        self._release_script = redis.register_script(_RELEASE)
        self._invalidate_script = redis.register_script(_INVALIDATE)

    def _done_key(self, holder: str) -> str:
        return f"{self.key}:done:{holder}"

    async def acquire(self, login: LoginFn, *, max_uses: int) -> str:
        try:
            return await super().acquire(login, max_uses=max_uses)
        except RedisError as exc:
            raise TokenStoreError(f"the token store (Redis) failed: {exc}") from exc

    async def _serve_head(self, waiters: _Waiters, head: _Waiter) -> None:
        max_uses = head.max_uses
        holder = secrets.token_hex(8)
        reply = await self._reserve_script(
            keys=[self.key, self.lock_key],
            args=[
                int(self._clock()),
                max_uses,
                waiters.wanted(max_uses),
                holder,
                int(self.lock_timeout * 1000),
            ],
        )
        kind = int(reply[0])
        if kind == _GRANTED:
            waiters.waiting_since = None
            waiters.hand_out(_text(reply[1]), int(reply[2]))
        elif kind == _LOCKED:
            waiters.waiting_since = None
            await self._login_holding_lock(waiters, head, holder)
        else:
            await self._wait_for(waiters, _text(reply[1]), int(reply[2]))

    async def _login_holding_lock(self, waiters: _Waiters, head: _Waiter, holder: str) -> None:
        keys = [self.lock_key, self._done_key(holder)]
        signal_ttl = int(self.lock_timeout * 1000)
        try:
            try:
                async with asyncio.timeout(self.login_timeout):
                    result = await head.login()
            except TimeoutError:
                raise APITimeoutError(
                    f"GPTalk login took longer than {self.login_timeout:g} s", endpoint="login"
                ) from None
            uses = waiters.wanted(head.max_uses)
            now = self._clock()
            await self._store_script(
                keys=[*keys, self.key],
                args=[
                    holder,
                    signal_ttl,
                    result.token,
                    result.expires_at,
                    uses,
                    head.max_uses,
                    repr(now),
                    # Measured by the clock the reservations judge expiry by, not by
                    # Redis's own (EXPIREAT), which may disagree with it.
                    math.floor((result.expires_at - now) * 1000),
                ],
            )
        except BaseException:
            # Let the next process try at once instead of after the lock's expiry.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self._release_script(keys=keys, args=[holder, signal_ttl]))
            raise
        # Uses go to the waiters even if the token looks expired by our clock: a token
        # issued a moment ago is as fresh as it gets.
        waiters.hand_out(result.token, uses)

    async def _wait_for(self, waiters: _Waiters, holder: str, lock_ttl_ms: int) -> None:
        now = time.monotonic()
        if waiters.waiting_since is None:
            waiters.waiting_since = now
        remaining = waiters.waiting_since + self._wait_timeout - now
        if remaining <= 0:
            raise APITimeoutError(
                "timed out waiting for another process to log in to GPTalk", endpoint="login"
            )
        # Until the holder signals, or its lock expires (it crashed), whichever first.
        block = min(remaining, self._max_block)
        if lock_ttl_ms > 0:
            block = min(block, lock_ttl_ms / 1000 + 0.01)
        done = self._done_key(holder)
        # BLMOVE from a list to itself: wakes on the holder's signal and leaves it there
        # for the other processes waiting on the same login. A timeout of 0 would block
        # forever, hence the floor.
        timeout = cast(int, round(max(block, 0.01), 3))  # redis-py types it int; Redis takes s.ms
        await self._redis.blmove(done, done, timeout, "LEFT", "RIGHT")

    async def invalidate(self, token: str | None = None) -> bool:
        try:
            return bool(await self._invalidate_script(keys=[self.key], args=[token or ""]))
        except RedisError as exc:
            raise TokenStoreError(f"the token store (Redis) failed: {exc}") from exc

    async def status(self) -> TokenStatus:
        try:
            raw = cast(dict[Any, Any], await self._redis.hgetall(self.key))
        except RedisError as exc:
            raise TokenStoreError(f"the token store (Redis) failed: {exc}") from exc
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if "token" not in fields:
            return TokenStatus(False, None, None, 0, int(fields.get("max_uses", 0)))
        return TokenStatus(
            has_token=True,
            obtained_at=float(fields["obtained_at"]) if "obtained_at" in fields else None,
            expires_at=int(fields["expires_at"]),
            uses=int(fields.get("uses", 0)),
            max_uses=int(fields.get("max_uses", 0)),
        )


def _text(value: Any) -> str:
    # The caller's client may or may not decode responses.
    return value.decode() if isinstance(value, bytes) else str(value)
