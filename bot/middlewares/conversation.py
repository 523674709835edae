"""Which conversation an update belongs to, for every handler that asks for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from bot.conversation.arrivals import Arrivals
from bot.storage.keys import ConversationKey

__all__ = ["ConversationMiddleware", "conversation_of"]


def conversation_of(message: Message) -> ConversationKey:
    """A chat's conversation, or its forum topic's when the message is in a topic."""
    thread = message.message_thread_id if message.is_topic_message else None
    return ConversationKey(message.chat.id, thread)


class ConversationMiddleware(BaseMiddleware):
    """Puts ``conversation: ConversationKey`` into the handler data of messages, and
    registers each message's arrival (in the dispatcher's order) until its handling
    ends."""

    def __init__(self, arrivals: Arrivals[ConversationKey]) -> None:
        self._arrivals = arrivals

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Message):
            return await handler(event, data)
        conversation = data["conversation"] = conversation_of(event)
        self._arrivals.arrive(conversation, event.message_id)
        try:
            return await handler(event, data)
        finally:
            await self._arrivals.leave(conversation, event.message_id)
