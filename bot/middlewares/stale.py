"""Messages that waited for the bot while it was offline (a backlog after downtime).

Answering a pile of old prompts at startup surprises people and floods Telegram;
commands from long ago (``/reset_token``) should not run either. Messages older
than ``max_age`` are skipped; in a private chat the user is told once (per chat,
per backlog) to send again what they still need.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiogram import BaseMiddleware
from aiogram.enums import ChatType
from aiogram.types import Message, TelegramObject

from bot.chat_events import is_chat_event
from bot.i18n import Texts
from bot.storage.expiry import ExpiringMap

__all__ = ["StaleMessageMiddleware"]


class StaleMessageMiddleware(BaseMiddleware):
    def __init__(
        self, max_age: float = 600.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_age, self._clock = max_age, clock
        # Chats told within the last ``max_age``: an older mark would not silence
        # anything, so it expires then (a backlog from many chats must not pile up).
        self._told: ExpiringMap[int, None] = ExpiringMap(max_age, clock=clock)

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Message) or not self._stale(event) or is_chat_event(event):
            return await handler(event, data)
        chat_id = event.chat.id
        if event.chat.type == ChatType.PRIVATE and chat_id not in self._told:
            self._told.put(chat_id, None)
            texts: Texts = data["texts"]
            await event.reply(texts.missed)
        return None

    def _stale(self, message: Message) -> bool:
        sent = message.date
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        return (datetime.now(UTC) - sent).total_seconds() > self._max_age
