"""Who may talk to the bot at all (``ALLOWED_USER_IDS``; admins always may)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.enums import ChatType
from aiogram.types import Message, TelegramObject

from bot.chat_events import is_chat_event
from bot.i18n import Texts

__all__ = ["AccessMiddleware"]


class AccessMiddleware(BaseMiddleware):
    """Drops messages from other bots, and from people not allowed to chat: those get
    a short refusal in private and are ignored in groups (no API call at all).

    Messages sent on behalf of a chat (anonymous group admins, linked channels) come
    from a service bot account with ``sender_chat`` set; they pass only when the bot
    is open to everyone.
    """

    def __init__(self, allowed: frozenset[int], admins: frozenset[int]) -> None:
        self._allowed, self._admins = allowed, admins

    def permits(self, message: Message) -> bool:
        user = message.from_user
        if message.sender_chat is not None:
            return not self._allowed
        if user is None or user.is_bot:
            return False
        return not self._allowed or user.id in self._allowed or user.id in self._admins

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Message) or self.permits(event) or is_chat_event(event):
            return await handler(event, data)
        if event.chat.type == ChatType.PRIVATE and event.from_user and not event.from_user.is_bot:
            texts: Texts = data["texts"]
            await event.answer(texts.not_allowed)
        return None
