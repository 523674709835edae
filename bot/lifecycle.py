"""One process's life between valid settings and exit: build the application,
check the token and register the menus, receive updates by the configured transport
until a signal, then close everything."""

from __future__ import annotations

import gc
import logging

from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramNetworkError,
    TelegramUnauthorizedError,
)

from bot.app import Application, StartupError, build_application
from bot.config import Settings, secrets_of
from bot.dispatcher import set_commands
from bot.logs import redact
from bot.storage.keys import Keys
from bot.transport.health import ListenError
from bot.transport.polling import run_polling
from bot.transport.webhook import (
    MemoryUpdateClaims,
    RedisUpdateClaims,
    UpdateClaims,
    WebhookError,
    run_webhook,
)
from gptalk.urls import without_userinfo

__all__ = ["StartupError", "run"]

log = logging.getLogger("bot")


def bot_api_name(settings: Settings) -> str:
    """The Bot API server for messages: without credentials, never with the token."""
    if settings.telegram_api_url is None:
        return "api.telegram.org (TELEGRAM_API_URL is not set)"
    return without_userinfo(settings.telegram_api_url)


def telegram_failure(exc: AiogramError, settings: Settings) -> str:
    """One line naming TELEGRAM_API_URL for a failed startup call. aiogram's
    messages quote aiohttp's, and those may hold the request URL — with the token."""
    where = bot_api_name(settings)
    detail = redact(str(exc), secrets_of(settings)).splitlines()[0] if str(exc) else ""
    if isinstance(exc, TelegramNetworkError):
        return f"TELEGRAM_API_URL: cannot reach the Bot API at {where} ({detail})"
    if isinstance(exc, TelegramAPIError):
        return f"TELEGRAM_API_URL: the Bot API at {where} refused the request ({detail})"
    # ClientDecodeError and the like: something answered, but not a Bot API.
    return f"TELEGRAM_API_URL: {where} does not answer like a Telegram Bot API server"


def access_mode(settings: Settings) -> str:
    """Who may chat, in one line: the first thing to check when access looks wrong."""
    admins = _count(len(settings.admin_ids), "admin")
    if not settings.allowed_user_ids:
        return f"open to everyone (ALLOWED_USER_IDS is empty); {admins} (ADMIN_IDS)"
    allowed = _count(len(settings.allowed_user_ids), "allowed user")
    return f"only {allowed} (ALLOWED_USER_IDS) and {admins} (ADMIN_IDS) may chat"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def prepare(app: Application) -> None:
    """Check the token, leave webhook mode when polling, register the command menu."""
    webhook = app.settings.webhook_url is not None
    try:
        me = await app.bot.get_me()
        if not webhook:
            await app.bot.delete_webhook()  # long polling and a webhook exclude each other
        await set_commands(app.bot, app.settings.admin_ids, app.settings.default_language)
    except TelegramUnauthorizedError:
        raise StartupError("BOT_TOKEN: Telegram rejected the token") from None
    except AiogramError as exc:
        raise StartupError(telegram_failure(exc, app.settings)) from None
    log.info(
        "starting as @%s (id %s), %s, replica %s",
        me.username,
        me.id,
        "webhook" if webhook else "long polling",
        app.settings.replica_id,
    )
    log.info("access: %s", access_mode(app.settings))


async def receive(app: Application) -> None:
    """Hand updates to the dispatcher until a signal, by the configured transport."""
    settings = app.settings
    if settings.webhook_url is None:
        try:
            await run_polling(
                bot=app.bot,
                dispatcher=app.dispatcher,
                health=app.health,
                health_port=settings.health_port,
                health_host=settings.health_host,
            )
        except ListenError as exc:
            raise StartupError(str(exc)) from None
        return
    assert settings.webhook_secret is not None  # checked with the settings
    claims: UpdateClaims = (
        RedisUpdateClaims(app.redis, Keys(settings.redis_prefix))
        if app.redis is not None
        else MemoryUpdateClaims()
    )
    try:
        await run_webhook(
            bot=app.bot,
            dispatcher=app.dispatcher,
            health=app.health,
            metrics=app.metrics,
            claims=claims,
            url=settings.webhook_url,
            path=settings.webhook_path,
            secret=settings.webhook_secret.get_secret_value(),
            host=settings.webhook_host,
            port=settings.webhook_port,
            health_host=settings.health_host,
            health_port=settings.health_port,
            drop_pending=settings.drop_pending_updates,
            drain=app.answerer.drain,
            shutdown_timeout=settings.shutdown_timeout,
            arrivals=app.answerer.arrivals,
        )
    except (WebhookError, ListenError) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:  # the port is taken, or the host is not ours
        raise StartupError(
            f"WEBHOOK_PORT: cannot listen on {settings.webhook_host}:{settings.webhook_port} "
            f"({exc.strerror or exc})"
        ) from None


async def run(settings: Settings) -> None:
    app = await build_application(settings)
    # Everything imported and built so far lives for the whole run: move it out of
    # the collector's reach, so full collections stop pausing the event loop for
    # ~200 ms (measured in bench/REPORT.md).
    gc.collect()
    gc.freeze()
    try:
        await prepare(app)
        # On SIGINT/SIGTERM the transport stops taking updates, then running
        # answers get SHUTDOWN_TIMEOUT to finish.
        await receive(app)
    finally:
        await app.aclose()
    log.info("stopped")
