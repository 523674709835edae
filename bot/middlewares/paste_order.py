"""Lets the paste merger (``bot/conversation/paste_merger.py``) see messages in arrival order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from bot.conversation.paste_merger import PasteKey, PasteMerger, sender_of
from bot.storage.keys import ConversationKey

__all__ = ["PasteOrderMiddleware"]


class PasteOrderMiddleware(BaseMiddleware):
    """Outer middlewares run in arrival order, before any filter: the merger learns
    here which long messages are on their way to a handler."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        merger: PasteMerger | None = data.get("paste_merger")
        conversation: ConversationKey | None = data.get("conversation")
        if not isinstance(event, Message) or merger is None or conversation is None:
            return await handler(event, data)
        async with merger.arriving(PasteKey(conversation, sender_of(event)), event):
            return await handler(event, data)
