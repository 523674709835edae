"""Which conversation an update belongs to, for every handler that asks for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from bot.storage.keys import ConversationKey

__all__ = ["ConversationMiddleware", "conversation_of"]


def conversation_of(message: Message) -> ConversationKey:
    """A chat's conversation, or its forum topic's when the message is in a topic."""
    thread = message.message_thread_id if message.is_topic_message else None
    return ConversationKey(message.chat.id, thread)


class ConversationMiddleware(BaseMiddleware):
    """Puts ``conversation: ConversationKey`` into the handler data of messages."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if isinstance(event, Message):
            data["conversation"] = conversation_of(event)
        return await handler(event, data)
