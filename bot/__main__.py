"""``python -m bot``: load settings, build the application, then receive updates
until a signal: long polling, or a webhook server when ``WEBHOOK_URL`` is set.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for invalid
configuration, 1 when a dependency (Redis, Telegram) is unusable at startup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from bot.config import ConfigError, load_settings, secrets_of, unknown_variables
from bot.logs import redact, setup_logging

log = logging.getLogger("bot")


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gptalk-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        settings.log_level,
        secrets=secrets_of(settings),
        fmt=settings.log_format,
        replica=settings.replica_id,
    )
    # A misspelt variable is ignored without a word otherwise: ALLOWED_USERS=42 would
    # leave the bot open to everyone.
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    # Imported only once the settings are valid: a configuration error is reported
    # before aiogram, aiohttp and redis are loaded (~3 s of CPU on a small machine).
    from bot.lifecycle import StartupError, run

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
