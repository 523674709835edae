"""Long polling (the default): one process per bot token fetches updates with getUpdates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Final

from aiogram import Bot, Dispatcher

from bot.transport.health import Health, serve_health

__all__ = ["ConflictLogFilter", "run_polling"]

log = logging.getLogger(__name__)

CONFLICT_LINE: Final = (
    "Telegram answered 409 Conflict: another process is polling with this BOT_TOKEN, and only "
    "one may poll at a time. Stop the other one, or run several replicas in webhook mode "
    "(WEBHOOK_URL). Telegram said: %s"
)


class ConflictLogFilter(logging.Filter):
    """On aiogram's dispatcher logger: its polling loop logs an error and a back-off
    warning on every 409, for as long as the other poller runs. We say it once, in
    words that tell what to do (again after ``quiet`` seconds, if it goes on)."""

    def __init__(self, quiet: float = 600.0) -> None:
        super().__init__()
        self._quiet = quiet
        self._said = -float("inf")
        self._conflict = False

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "Failed to fetch updates - %s: %s" and args[:1] == (
            "TelegramConflictError",
        ):
            self._conflict = True
            now = time.monotonic()
            if now - self._said >= self._quiet:
                self._said = now
                log.error(CONFLICT_LINE, args[1] if len(args) > 1 else "")
            return False
        if self._conflict and isinstance(record.msg, str):
            if record.msg.startswith("Sleep for"):
                return False
            if record.msg.startswith("Connection established"):
                self._conflict = False
                return False
        return True


async def run_polling(
    *,
    bot: Bot,
    dispatcher: Dispatcher,
    health: Health,
    health_port: int | None,
    health_host: str,
) -> None:
    """Poll until SIGTERM/SIGINT. The dispatcher's shutdown hook then lets running
    answers finish; ``/readyz`` answers 503 from the signal on."""
    runner = await serve_health(health, health_host, health_port) if health_port else None
    conflicts = ConflictLogFilter()
    aiogram_log = logging.getLogger("aiogram.dispatcher")
    aiogram_log.addFilter(conflicts)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        health.draining = True
        if not stopping:
            stopping.append(asyncio.create_task(dispatcher.stop_polling()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await dispatcher.start_polling(
            bot,
            allowed_updates=dispatcher.resolve_used_update_types(),
            handle_signals=False,
            close_bot_session=False,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if stopping:
            with contextlib.suppress(RuntimeError):  # a signal before polling began
                await stopping[0]
        if runner is not None:
            await runner.cleanup()
        aiogram_log.removeFilter(conflicts)
