"""Whatever escapes a handler: logged with its traceback, and a short apology to the
chat — never the exception text."""

from __future__ import annotations

import logging
import time

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError
from aiogram.types import ErrorEvent, Message
from redis.exceptions import RedisError

from bot.addressing import addressed
from bot.chat_admins import ChatAdminsUnavailableError
from bot.delivery.scheduler import ChatterDroppedError
from bot.i18n import Texts
from gptalk import TokenStoreError

__all__ = ["create_router"]

log = logging.getLogger(__name__)


class _Throttle:
    """At most one log line per ``period`` for a recurring outage (no log flood)."""

    def __init__(self, period: float = 60.0) -> None:
        self._period, self._last = period, -period

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._period:
            return False
        self._last = now
        return True


_redis_log = _Throttle()


async def _for_this_bot(message: Message, bot: Bot) -> bool:
    """Whether the failed message was meant for the bot (only those get a reply:
    in a group, chatter that happened to fail must not make the bot speak)."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    text = message.text or message.caption or ""
    return text.startswith("/") or addressed(message, await bot.me()) is not None


async def on_error(event: ErrorEvent, bot: Bot, texts: Texts) -> bool:
    exc = event.exception
    if isinstance(exc, ChatterDroppedError):
        return True  # a reply that could not go out in time: counted and logged already
    if isinstance(exc, TelegramForbiddenError):
        # Blocked by the user, or removed from the group: nothing to tell anyone.
        log.info("cannot write to the chat of update %s: %s", event.update.update_id, exc.message)
        return True
    # The token store wraps its Redis failures (/token, /reset_token): the same outage.
    if isinstance(exc, RedisError | TokenStoreError):
        if _redis_log.allow():
            log.warning("Redis is unavailable: %s (further reports muted for a minute)", exc)
        text = texts.unavailable
    elif isinstance(exc, ChatAdminsUnavailableError):
        # Telegram's trouble, not a bug: no traceback; the command did nothing.
        log.warning("cannot check the chat's admins: %s", exc)
        text = texts.admin_check_failed
    else:
        log.error("unhandled error in update %s", event.update.update_id, exc_info=exc)
        text = texts.failed
    message = event.update.message
    if message is not None and await _for_this_bot(message, bot):
        try:
            await message.reply(text)
        except TelegramAPIError as send_error:
            log.warning("could not tell chat %s about the error: %s", message.chat.id, send_error)
    return True


def create_router() -> Router:
    router = Router(name="errors")
    router.errors.register(on_error)
    return router
