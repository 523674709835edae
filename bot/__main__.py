"""``python -m bot``: load settings, build the application, poll until a signal.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for invalid
configuration, 1 when a dependency (Redis, Telegram) is unusable at startup.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramNetworkError,
    TelegramUnauthorizedError,
)
from yarl import URL

from bot.app import Application, StartupError, build_application
from bot.config import ConfigError, Settings, load_settings
from bot.dispatcher import set_commands
from bot.logs import redact, setup_logging

log = logging.getLogger("bot")


def secrets_of(settings: Settings) -> list[str]:
    """What must never be printed: the bot token (and its secret half on its own),
    the model service's API key."""
    token = settings.bot_token.get_secret_value()
    return [token, token.partition(":")[2], settings.openai_api_key.get_secret_value()]


def bot_api_name(settings: Settings) -> str:
    """The Bot API server for messages: without credentials, never with the token."""
    if settings.telegram_api_url is None:
        return "api.telegram.org (TELEGRAM_API_URL is not set)"
    return str(URL(settings.telegram_api_url).with_user(None))


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


async def prepare(app: Application) -> None:
    """Check the token, leave webhook mode, register the command menu."""
    try:
        me = await app.bot.get_me()
        await app.bot.delete_webhook()  # long polling and a webhook exclude each other
        await set_commands(app.bot, app.settings.admin_ids, app.settings.default_language)
    except TelegramUnauthorizedError:
        raise StartupError("BOT_TOKEN: Telegram rejected the token") from None
    except AiogramError as exc:
        raise StartupError(telegram_failure(exc, app.settings)) from None
    log.info("starting as @%s (id %s), long polling", me.username, me.id)


async def run(settings: Settings) -> None:
    app = await build_application(settings)
    # Everything imported and built so far lives for the whole run: move it out of
    # the collector's reach, so full collections stop pausing the event loop for
    # ~200 ms (measured in bench/REPORT.md).
    gc.collect()
    gc.freeze()
    try:
        await prepare(app)
        # aiogram handles SIGINT/SIGTERM: polling stops, then the dispatcher's
        # shutdown hook lets running answers finish (SHUTDOWN_TIMEOUT).
        await app.dispatcher.start_polling(
            app.bot,
            allowed_updates=app.dispatcher.resolve_used_update_types(),
            handle_signals=True,
            close_bot_session=False,
        )
    finally:
        await app.aclose()
    log.info("stopped")


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gptalk-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, secrets=secrets_of(settings))
    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        print(f"gptalk-bot: {redact(str(exc), secrets_of(settings))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception:
        # A bug, not a setting: the traceback goes through the log's redaction
        # rather than Python's own printer, which would show tokens in URLs.
        log.critical("stopped by an unexpected error", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
