"""``/healthz``, ``/readyz`` and ``/metrics`` on a listener of their own
(``HEALTH_HOST``:``HEALTH_PORT``, in either mode), never on the webhook listener: that
one faces the internet, and these are for the orchestrator and Prometheus.

* ``/healthz``: the process and its event loop answer.
* ``/readyz``: this replica should get traffic: it is not draining, Redis answers
  and the Bot API answers (that check is cached for a few seconds, so a load
  balancer probing every second costs Telegram one ``getMe`` per ``api_ttl``).
* ``/metrics``: Prometheus text.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.observability import Metrics

__all__ = ["Health", "ListenError", "serve_health"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0


class ListenError(Exception):
    """The health listener cannot be opened; the message is the one line to print."""


class Health:
    def __init__(
        self, *, bot: Bot, redis: Redis | None, metrics: Metrics, api_ttl: float = 5.0
    ) -> None:
        self._bot = bot
        self._redis = redis
        self._metrics = metrics
        self._api_ttl = api_ttl
        self._api_checked = -float("inf")
        self._api_ok = False
        self._api_lock = asyncio.Lock()
        self.draining = False  # set on SIGTERM: the load balancer should look elsewhere

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        problem = await self.problem()
        if problem is not None:
            return web.Response(status=503, text=f"not ready: {problem}\n")
        return web.Response(text="ready\n")

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def problem(self) -> str | None:
        """Why this replica is not ready, or None."""
        if self.draining:
            return "draining"
        if self._redis is not None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await self._redis.ping()
            except (RedisError, OSError, TimeoutError):
                return "Redis is unreachable"
        if not await self._api_reachable():
            return "the Bot API is unreachable"
        return None

    async def _api_reachable(self) -> bool:
        async with self._api_lock:  # one getMe for a burst of probes
            if time.monotonic() - self._api_checked >= self._api_ttl:
                try:
                    await self._bot.get_me(request_timeout=int(CHECK_TIMEOUT))
                    self._api_ok = True
                except (TelegramAPIError, TimeoutError, OSError) as exc:
                    log.warning("readiness: the Bot API check failed: %s", exc)
                    self._api_ok = False
                self._api_checked = time.monotonic()
            return self._api_ok


async def serve_health(health: Health, host: str, port: int) -> web.AppRunner:
    """The health endpoints alone; ``cleanup()`` the runner to stop."""
    app = web.Application()
    health.register(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # the port is taken, or the host is not ours
        await runner.cleanup()
        raise ListenError(
            f"HEALTH_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None
    log.info("health endpoints on %s:%s", host, port)
    return runner
