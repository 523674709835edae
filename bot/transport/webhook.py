"""Webhook mode: Telegram POSTs updates to ``WEBHOOK_URL``; several replicas may
share the work behind a load balancer.

The listener serves the webhook path and nothing else (health and metrics have their
own, ``bot/transport/health.py``). Each request is checked
(``X-Telegram-Bot-Api-Secret-Token``, else 401; a body that is not an update: 400), its
``update_id`` claimed once for all replicas (Redis ``SET NX EX``; Telegram
redelivers an update it thinks was lost, and a load balancer may send the copy to
another replica), and answered 200 at once: the update is processed in a
background task, since an answer streams for up to minutes and Telegram would
time out and redeliver. A claim that cannot be made (Redis down) is answered 503,
so Telegram tries again later rather than the update being lost or run twice.

Before the 200, a message is announced to its conversation's shared line
(``bot/conversation/arrivals.py``): Telegram sends a chat's next update only once
this one is answered, so the announcement keeps the chat's prompts in order even
when the next one reaches another replica and is processed faster.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError
from aiogram.methods import TelegramMethod
from aiogram.types import Update
from aiogram.types.update import UpdateTypeLookupError
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.conversation.arrivals import Arrivals
from bot.middlewares.conversation import conversation_of
from bot.observability import Metrics
from bot.storage.keys import ConversationKey, Keys
from bot.transport.health import Health, serve_health

__all__ = [
    "ForgedLog",
    "MemoryUpdateClaims",
    "RedisUpdateClaims",
    "UpdateClaims",
    "WebhookError",
    "WebhookHandler",
    "register_webhook",
    "run_webhook",
]

log = logging.getLogger(__name__)

CLAIM_TTL: Final = 24 * 3600  # Telegram gives up redelivering long before this
MEMORY_CLAIMS: Final = 100_000
FORGED_LOG_EVERY: Final = 60.0  # seconds between two "forged request" lines


class WebhookError(Exception):
    """Telegram refused the webhook; the message is the one line to print."""


class UpdateClaims(Protocol):
    async def claim(self, update_id: int) -> bool:
        """True for the first claim of ``update_id``; raises when it cannot be decided."""
        ...


class RedisUpdateClaims:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis, self._keys = redis, keys

    async def claim(self, update_id: int) -> bool:
        fresh = await self._redis.set(self._keys.update_claim(update_id), 1, nx=True, ex=CLAIM_TTL)
        return bool(fresh)


class MemoryUpdateClaims:
    """One replica without Redis: the newest ``limit`` ids, oldest forgotten first."""

    def __init__(self, limit: int = MEMORY_CLAIMS) -> None:
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._limit = limit

    async def claim(self, update_id: int) -> bool:
        if update_id in self._seen:
            return False
        self._seen[update_id] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


class ForgedLog:
    """The warning about requests without the right secret, at most one line every
    ``every`` seconds, each saying how many went unlogged since the one before: the
    webhook is public, and a line per request let anyone fill the log (200 requests,
    38 KB)."""

    def __init__(
        self, every: float = FORGED_LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        self._logged = -float("inf")
        self._unlogged = 0

    def forged(self, remote: str | None) -> None:
        now = self._clock()
        if now - self._logged < self._every:
            self._unlogged += 1
            return
        self._logged = now
        unlogged, self._unlogged = self._unlogged, 0
        log.warning(
            "webhook request without the right secret token from %s%s",
            remote,
            f" ({unlogged} more since the last line, not logged one by one)" if unlogged else "",
        )

    def flush(self) -> None:
        """At stop: the requests no line has counted yet."""
        if self._unlogged:
            log.warning(
                "webhook requests without the right secret token since the last line: %d",
                self._unlogged,
            )
            self._unlogged = 0


def has_known_type(update: Update) -> bool:
    try:
        return bool(update.event_type)
    except UpdateTypeLookupError:
        return False


Arrival = tuple[ConversationKey, int]  # a message: its conversation and id


class WebhookHandler(SimpleRequestHandler):
    """aiogram's handler, plus the claim, the announcement, the drain state and task
    tracking."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        bot: Bot,
        *,
        secret_token: str,
        claims: UpdateClaims,
        health: Health,
        metrics: Metrics,
        arrivals: Arrivals[ConversationKey] | None = None,
        **data: Any,
    ) -> None:
        super().__init__(
            dispatcher, bot, handle_in_background=True, secret_token=secret_token, **data
        )
        self._secret = secret_token.encode()
        self._forged = ForgedLog()
        self._claims = claims
        self._health = health
        self._metrics = metrics
        self._arrivals = arrivals or Arrivals()
        self._tasks: set[asyncio.Task[None]] = set()

    def verify_secret(self, telegram_secret_token: str, bot: Bot) -> bool:
        # As bytes: compare_digest raises TypeError for a str with a non-ASCII character,
        # which made aiogram's check answer such a header with a 500 and a traceback.
        given = telegram_secret_token.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(given, self._secret)

    async def handle(self, request: web.Request) -> web.Response:
        if self._health.draining:  # Telegram retries; another replica takes it
            return web.Response(status=503, text="draining")
        header = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not self.verify_secret(header, self.bot):
            self._forged.forged(request.remote)
            return web.Response(status=401, text="Unauthorized")
        try:
            raw = await request.json(loads=self.bot.session.json_loads)
            update = Update.model_validate(raw, context={"bot": self.bot})
        except (
            ValueError,
            TypeError,
            ValidationError,
            LookupError,
            RecursionError,
            ConnectionResetError,
        ) as exc:
            # Telegram sends none of these (LookupError: an unknown charset; RecursionError:
            # JSON nested too deep; ConnectionResetError: the body was cut off), so a line
            # without the traceback is enough.
            log.warning("webhook request that is not an update (%s): 400", type(exc).__name__)
            return web.Response(status=400, text="not an update")
        update_id = update.update_id
        if not has_known_type(update):
            # Newer than this aiogram: no handler could take it, and Telegram must not
            # send it again.
            log.debug("update %s is of a type this bot does not know: ignored", update_id)
            return web.json_response({})
        try:
            fresh = await self._claims.claim(update_id)
        except (RedisError, OSError) as exc:
            log.warning(
                "update %s not claimed, Redis failed (%s): asking for redelivery", update_id, exc
            )
            return web.Response(status=503, text="storage unavailable")
        if not fresh:
            self._metrics.webhook_duplicates.inc()
            log.info("update %s already claimed: skipped", update_id)
            return web.json_response({})
        arrival = None
        if update.message is not None:
            arrival = conversation_of(update.message), update.message.message_id
            await self._arrivals.announce(*arrival)
        task = asyncio.create_task(self._process(update, arrival), name=f"update-{update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({})

    async def _process(self, update: Update, arrival: Arrival | None) -> None:
        try:
            result = await self.dispatcher.feed_update(self.bot, update, **self.data)
            if isinstance(result, TelegramMethod):
                await self.dispatcher.silent_call_request(bot=self.bot, result=result)
        except Exception:  # one bad update must not go unnoticed, nor stop the others
            log.exception("update %s failed", update.update_id)
        finally:
            if arrival is not None:  # also when no handler saw it (a stranger, stale)
                await self._arrivals.leave(*arrival)

    async def close(self) -> None:
        """The listener stops. (The composition root closes the bot's session, after
        the drain.)"""
        self._forged.flush()

    async def drain(self, grace: float) -> None:
        """Wait for updates being processed, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


async def register_webhook(
    bot: Bot, url: str, secret: str, allowed_updates: list[str], drop_pending: bool
) -> None:
    """setWebhook, dropping pending updates only when the URL changes: a replica that
    restarts in a rolling deploy must not throw away the updates meant for the others."""
    info = await bot.get_webhook_info()
    changed = info.url != url
    await bot.set_webhook(
        url,
        secret_token=secret,
        allowed_updates=allowed_updates,
        drop_pending_updates=drop_pending and changed,
    )
    if changed:
        log.info("webhook registered%s", " (pending updates dropped)" if drop_pending else "")


async def run_webhook(
    *,
    bot: Bot,
    dispatcher: Dispatcher,
    health: Health,
    metrics: Metrics,
    claims: UpdateClaims,
    url: str,
    path: str,
    secret: str,
    host: str,
    port: int,
    health_host: str,
    health_port: int | None,
    drop_pending: bool,
    drain: Callable[[float], Awaitable[None]],
    shutdown_timeout: float,
    arrivals: Arrivals[ConversationKey] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (503 meanwhile) and stop. The health
    listener (``health_port``) opens once the webhook is served and registered, so
    that ``/readyz`` says 200 only when updates can come in.

    ``drain(grace)`` lets running answers finish (the answerer's); after it, updates
    still being processed get a few more seconds.
    """
    app = web.Application()
    handler = WebhookHandler(
        dispatcher,
        bot,
        secret_token=secret,
        claims=claims,
        health=health,
        metrics=metrics,
        arrivals=arrivals,
    )
    handler.register(app, path=path)
    setup_application(app, dispatcher, bot=bot)  # the dispatcher's startup/shutdown hooks
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    health_runner: web.AppRunner | None = None
    try:
        await web.TCPSite(runner, host, port).start()
        try:
            await register_webhook(
                bot, url, secret, dispatcher.resolve_used_update_types(), drop_pending
            )
        except TelegramAPIError as exc:
            raise WebhookError(f"WEBHOOK_URL: Telegram refused the webhook ({exc})") from None
        log.info("webhook mode: serving %s on %s:%s", path, host, port)
        if health_port:
            health_runner = await serve_health(health, health_host, health_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopping: draining (the webhook and /readyz answer 503 meanwhile)")
        health.draining = True
        await drain(shutdown_timeout)
        await handler.drain(10.0)
    finally:
        await runner.cleanup()
        if health_runner is not None:
            await health_runner.cleanup()
