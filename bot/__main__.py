"""``python -m bot``: load settings, build the application, poll until a signal.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for invalid
configuration, 1 when a dependency (Redis, Telegram) is unusable at startup.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramUnauthorizedError

from bot.app import Application, StartupError, build_application
from bot.config import ConfigError, Settings, load_settings
from bot.dispatcher import set_commands
from bot.logs import setup_logging

log = logging.getLogger("bot")


async def prepare(app: Application) -> None:
    """Check the token, leave webhook mode, register the command menu."""
    try:
        me = await app.bot.get_me()
        await app.bot.delete_webhook()  # long polling and a webhook exclude each other
        await set_commands(app.bot, app.settings.admin_ids)
    except TelegramUnauthorizedError:
        raise StartupError("BOT_TOKEN: Telegram rejected the token") from None
    except (TelegramNetworkError, TelegramAPIError) as exc:
        raise StartupError(f"cannot use the Telegram Bot API: {exc}") from None
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
    setup_logging(
        settings.log_level,
        secrets=[
            settings.bot_token.get_secret_value(),
            settings.openai_api_key.get_secret_value(),
        ],
    )
    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        print(f"gptalk-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
