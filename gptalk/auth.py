"""Where the GPTalk bearer token and its use count live.

A token may be used ``max_uses`` times (GPTalk's quota per login). Stores hand out
*reservations*: :meth:`TokenStore.acquire` returns a token with one use already
counted, so concurrent requests can never push the count past the limit (the
original provider's bug: two requests reading ``used_times == 4`` both used the
token, the count went to 6, and ``== 5`` never fired again).

Two stores share one algorithm (:class:`_SingleFlightStore`):

* :class:`MemoryTokenStore` keeps the token in process memory.
* :class:`RedisTokenStore` keeps it in Redis so that every process shares one
  token; a use is reserved by a Lua script and only the holder of a lock key logs
  in, so N requests cost exactly ``ceil(N / max_uses)`` logins across processes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
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


class _SingleFlightStore:
    """The acquire algorithm, over three storage primitives.

    When no use can be reserved, one *flight* per process (an asyncio task) obtains
    a fresh token, and every coroutine that needs one awaits that same flight: a
    failing login fails them all at once instead of being retried by each in turn.
    After the flight, each waiter reserves a use of the fresh token specifically,
    ignoring expiry (a token issued a moment ago is as fresh as it gets, even when
    the clocks disagree), so the loop always makes progress.
    """

    def __init__(self) -> None:
        self._flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[str]] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self, login: LoginFn, *, max_uses: int) -> str:
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        token = await self._reserve(max_uses)
        if token is not None:
            return token
        while True:
            fresh = await asyncio.shield(self._flight(login, max_uses))
            if await self._reserve(max_uses, expected=fresh) is not None:
                return fresh
            # Other requests took every use of the fresh token first: go round again
            # (the next flight first looks for a token someone else obtained).

    def _flight(self, login: LoginFn, max_uses: int) -> asyncio.Task[str]:
        # Keyed by event loop: a store may outlive one asyncio.run() (the seed API's
        # class-level store does), and a task belongs to the loop that created it.
        loop = asyncio.get_running_loop()
        flight = self._flights.get(loop)
        if flight is None or flight.done():
            flight = loop.create_task(self._obtain(login, max_uses))
            flight.add_done_callback(_consume_exception)
            self._flights[loop] = flight
        return flight

    async def _reserve(self, max_uses: int, expected: str | None = None) -> str | None:
        """Reserve one use of the current token (of ``expected``, ignoring expiry)."""
        raise NotImplementedError

    async def _obtain(self, login: LoginFn, max_uses: int) -> str:
        """Make sure a usable token is stored, logging in if no one else has; return it."""
        raise NotImplementedError


def _consume_exception(task: asyncio.Task[str]) -> None:
    # The waiters re-raise the flight's exception; retrieve it here too so that a
    # flight nobody awaited any more does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class AuthHolder(Protocol):
    """Anything with the seed API's two attributes, e.g. the ``GPTalk`` class itself."""

    _auth: dict[str, Any] | None
    used_times: int


class _Holder:
    def __init__(self) -> None:
        self._auth: dict[str, Any] | None = None
        self.used_times = 0


class MemoryTokenStore(_SingleFlightStore):
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

    def _usable(self, max_uses: int, expected: str | None = None) -> str | None:
        auth = self._holder._auth
        if not auth:
            return None
        token = auth.get("token")
        if not isinstance(token, str) or self._holder.used_times >= max_uses:
            return None
        if expected is not None:
            return token if token == expected else None
        expires_at = auth.get("expires_at")
        if not isinstance(expires_at, int | float) or expires_at < int(self._clock()):
            return None
        return token

    async def _reserve(self, max_uses: int, expected: str | None = None) -> str | None:
        self._max_uses = max_uses
        token = self._usable(max_uses, expected)
        if token is not None:
            self._holder.used_times += 1
        return token

    async def _obtain(self, login: LoginFn, max_uses: int) -> str:
        token = self._usable(max_uses)
        if token is not None:  # a flight that ended just before this one began stored it
            return token
        result = await login()
        self._holder._auth = result.data
        self._holder.used_times = 0
        self._obtained_at = self._clock()
        return result.token

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


# KEYS[1] = auth hash; ARGV = now, max_uses, expected token ("" = the current one).
# The limit is the smaller of the caller's max_uses and the one stored at login,
# so processes configured differently still never overuse a token.
_RESERVE: Final = """
local v = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'uses', 'max_uses')
if not v[1] then return false end
if ARGV[3] ~= '' then
  if v[1] ~= ARGV[3] then return false end
elseif tonumber(v[2]) < tonumber(ARGV[1]) then
  return false
end
local limit = tonumber(ARGV[2])
if v[4] and tonumber(v[4]) < limit then limit = tonumber(v[4]) end
if tonumber(v[3] or '0') >= limit then return false end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'uses', 1) end
return v[1]
"""

# KEYS[1] = auth hash; ARGV[1] = token ("" = whatever the current one is).
_INVALIDATE: Final = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS[1] = lock key; ARGV[1] = this holder's id. Only the holder may release it.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTokenStore(_SingleFlightStore):
    """A token store in Redis, shared by every process that uses the same ``prefix``.

    Keys: ``{prefix}:auth`` (hash: ``token``, ``expires_at``, ``uses``, ``max_uses``,
    ``obtained_at``) and ``{prefix}:auth:lock`` (held, with an expiry, by the one
    process that is logging in). ``lock_timeout`` must exceed the time a login can
    take: if a holder crashes, others wait for its lock to expire. Waiting for
    another process's login gives up after ``wait_timeout`` seconds.

    The Redis client is borrowed, not owned: closing it is the caller's job.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "gptalk",
        lock_timeout: float = 30.0,
        wait_timeout: float | None = None,
        poll_interval: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._redis = redis
        self.key = f"{prefix}:auth"
        self.lock_key = f"{prefix}:auth:lock"
        self._lock_timeout = lock_timeout
        self._wait_timeout = wait_timeout if wait_timeout is not None else 2 * lock_timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._reserve_script = redis.register_script(_RESERVE)
        self._invalidate_script = redis.register_script(_INVALIDATE)
        self._release_script = redis.register_script(_RELEASE)

    async def acquire(self, login: LoginFn, *, max_uses: int) -> str:
        try:
            return await super().acquire(login, max_uses=max_uses)
        except RedisError as exc:
            raise TokenStoreError(f"the token store (Redis) failed: {exc}") from exc

    async def _check(self, max_uses: int, expected: str | None, *, take: bool) -> str | None:
        result = await self._reserve_script(
            keys=[self.key],
            args=[int(self._clock()), max_uses, expected or "", "1" if take else "0"],
        )
        return _text(result) if result else None

    async def _reserve(self, max_uses: int, expected: str | None = None) -> str | None:
        return await self._check(max_uses, expected, take=True)

    async def _obtain(self, login: LoginFn, max_uses: int) -> str:
        deadline = time.monotonic() + self._wait_timeout
        while True:
            holder_id = secrets.token_hex(8)
            locked = await self._redis.set(
                self.lock_key, holder_id, nx=True, px=int(self._lock_timeout * 1000)
            )
            if locked:
                try:
                    # Another process may have logged in between our failed
                    # reservation and taking the lock.
                    current = await self._check(max_uses, None, take=False)
                    if current is not None:
                        return current
                    result = await login()
                    await self._store(result, max_uses)
                    return result.token
                finally:
                    await self._release_script(keys=[self.lock_key], args=[holder_id])
            await asyncio.sleep(self._poll_interval)
            current = await self._check(max_uses, None, take=False)
            if current is not None:
                return current
            if time.monotonic() > deadline:
                raise APITimeoutError(
                    "timed out waiting for another process to log in to GPTalk", endpoint="login"
                )

    async def _store(self, result: LoginResult, max_uses: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            pipe.hset(
                self.key,
                mapping={
                    "token": result.token,
                    "expires_at": result.expires_at,
                    "uses": 0,
                    "max_uses": max_uses,
                    "obtained_at": repr(self._clock()),
                },
            )
            await pipe.execute()

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
