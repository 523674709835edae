"""A Redis client from a URL: one server, or the master that Redis Sentinel names.

``redis://``, ``rediss://`` and ``unix://`` URLs are redis-py's own. A Sentinel URL
names the sentinels and the master's name instead of a server::

    redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/db][?sentinel_password=…]

The user and password are the master's (and its replicas'); ``sentinel_password``
is the sentinels' own ``requirepass``. The client is redis-py's
(``Sentinel(...).master_for(name)``): every new connection asks the sentinels where
the master is now, and a connection still open to a demoted master is dropped at
its first ``READONLY`` answer (or when Sentinel, demoting it, closes its clients), so
after a failover commands (and pub/sub, which resubscribes on reconnecting) reach
the new master. The pool also listens to the sentinels' ``+switch-master``
announcements and drops every connection at once when its master is switched: after
a failover Sentinel was asked for (``SENTINEL FAILOVER``), the old master stays up
and writable for seconds, and connections still open to it would go on writing
where the coming resync throws it away.

Error messages never quote the URL or any part of it: it may hold passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .urls import url_secrets

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelURL",
    "check_redis_url",
    "is_sentinel_url",
    "parse_sentinel_url",
    "redis_from_url",
    "url_secrets",  # now gptalk.urls's (any URL); still importable from here
]

log = logging.getLogger("gptalk.redis")

SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379
# What the sentinels' own clients take from the options given for the master's:
# the same bounds in time, so that a dead sentinel fails as fast as a dead master.
_SENTINEL_OPTIONS: Final = ("socket_timeout", "socket_connect_timeout", "retry")
_FORM: Final = "redis+sentinel://[user:password@]host:26379[,host:26379…]/<master-name>[/db]"
SWITCH_CHANNEL: Final = "+switch-master"  # "<master name> <old ip> <old port> <new ip> <new port>"
_LISTEN_POLL: Final = 1.0  # seconds a read of the announcements waits before looking again
_LISTEN_RETRY: Final = 1.0  # seconds between rounds over the sentinels while none answers


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; ValueError (never quoting it) if malformed."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    # Parsed by hand: urllib takes one host per URL, and balks at a list of them
    # holding an IPv6 address.
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_sentinel(part, n) for n, part in enumerate(hosts.split(","), 1))
    master, _, db_part = path.partition("/")
    master = unquote(master)
    if not master:
        raise ValueError(f"no master name; the form is {_FORM}")
    db_part = db_part.removesuffix("/")
    if db_part and not db_part.isdigit():
        raise ValueError("the database after the master's name is not a number")
    sentinel_password = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "sentinel_password":
            # Not named: "?secret" would make the password the option's name.
            raise ValueError("an unknown option after '?': only sentinel_password is read")
        sentinel_password = value or None
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=int(db_part or 0),
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def _sentinel(part: str, n: int) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [::1]:26379
        host, bracket, port = part[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"sentinel {n}: unbalanced [ ] around an IPv6 address")
        port = port[1:]
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"sentinel {n}: no host name; the form is {_FORM}")
    if not port:
        return host, SENTINEL_PORT
    # Not echoed: after a forgotten "@", the "port" is the password.
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel {n}: the port is not a number from 1 to 65535")
    return host, int(port)


def check_redis_url(url: str) -> None:
    """ValueError, saying why without quoting the URL, unless :func:`redis_from_url`
    can use ``url``."""
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ValueError(f"is not a valid Redis Sentinel URL ({exc})") from None
        return
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
    try:
        parse_url(url)  # what the connection pool does later, with a traceback
    except ValueError as exc:
        # urllib quotes a non-numeric port, which in "redis://:secret" is the
        # password: name the problem without it.
        reason = "the port is not a number" if "integer" in str(exc) else str(exc)
        raise ValueError(f"is not a valid Redis URL ({reason})") from None


class _Sentinel(Sentinel):
    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            # redis-py names each sentinel that failed by its client's repr: the whole
            # connection configuration, over a thousand characters a sentinel. Its host
            # and port say as much, in logs and in the startup error.
            message = str(exc)
            for client in self.sentinels:
                where = client.connection_pool.connection_kwargs
                message = message.replace(str(client), f"{where['host']}:{where['port']}")
            raise MasterNotFoundError(message) from None


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that asks the sentinels where it is whenever it
    connects again. redis-py's own does so only when it is taken from the pool: a
    command that finds it closed (dropped at a switch, say) reconnects it in
    ``send_packed_command`` to the address it had, the old master
    (redis/redis-py#3874, open as of 8.1)."""

    _asking = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected or self._asking:
            # Connected, or called back by connect_to() with the address just asked.
            await super().connect_check_health(check_health, retry_socket_connect)
            return
        self._asking = True
        try:
            await self.connect()  # type: ignore[no-untyped-call]  # asks the sentinels first
        finally:
            self._asking = False


class _SentinelMasterPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to whichever server the sentinels name master; like
    :class:`BlockingConnectionPool`, a command waits (up to ``timeout``) for a free
    connection rather than failing when all are busy. Closing it closes the
    clients that talk to the sentinels too, which ``master_for`` leaves open.

    From its first connection on, it listens to one sentinel's ``+switch-master``
    (the next one when that one goes away), as Jedis's ``JedisSentinelPool`` does, and
    when its master is switched it drops every connection, idle or in use: the next
    command connects to the master the sentinels name now, and a command cut off in
    flight is retried there by the client's retry (a write the old master took is
    lost with it either way)."""

    _listener: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._listener is None:
            self._listener = asyncio.create_task(
                self._listen(), name=f"sentinel-switches-{self.service_name}"
            )
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def _listen(self) -> None:
        # redis-py's reads may swallow a cancellation (asyncio.wait_for on 3.11): the
        # task also ends at its next look once it is no longer the pool's listener.
        me = asyncio.current_task()
        while self._listener is me:
            # A copy: discovering the master moves the sentinel that answered to the front.
            for sentinel in list(self.sentinel_manager.sentinels):
                if self._listener is not me:
                    return
                pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(SWITCH_CHANNEL)
                    while self._listener is me:
                        message = await pubsub.get_message(timeout=_LISTEN_POLL)
                        if message is not None:
                            await self._switched(message["data"])
                except (RedisError, OSError):
                    pass  # this sentinel is gone: listen to the next
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
            if self._listener is me:
                await asyncio.sleep(_LISTEN_RETRY)

    async def _switched(self, data: bytes | str) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        fields = text.split()
        if len(fields) != 5 or fields[0] != self.service_name:
            return
        log.warning("Redis Sentinel switched master %r from %s:%s to %s:%s: reconnecting", *fields)
        self.master_address = None  # asked again at the next connection
        with contextlib.suppress(RedisError, OSError):
            await self.disconnect(inuse_connections=True)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        try:
            await super().aclose()
        finally:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def redis_from_url(url: str, **options: Any) -> Redis:
    """A client for ``url`` on a :class:`BlockingConnectionPool` (``options`` are the
    pool's and its connections': ``max_connections``, ``timeout``, ``socket_timeout``,
    ``retry``…). A Sentinel URL gives the master's client; the sentinels are asked
    with the same socket timeouts and retry. Nothing connects before the first
    command. ValueError if the URL is malformed."""
    if not is_sentinel_url(url):
        return Redis.from_pool(BlockingConnectionPool.from_url(url, **options))
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {k: options[k] for k in _SENTINEL_OPTIONS if k in options}
    # Without a retry of the caller's, not redis-py's default (three, backing off for
    # seconds): a sentinel that is down is skipped for the next one, not waited for.
    sentinel_options.setdefault("retry", Retry(NoBackoff(), 1))
    if parsed.sentinel_password is not None:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = _Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    client: Redis = sentinel.master_for(
        parsed.master,
        connection_pool_class=_SentinelMasterPool,
        connection_class=_MasterConnection,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return client
