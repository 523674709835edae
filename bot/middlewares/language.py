"""Which language an update is answered in: its sender's (``texts`` for handlers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.dispatcher.middlewares.user_context import EVENT_FROM_USER_KEY
from aiogram.types import TelegramObject, User

from bot.i18n import Language, texts_for

__all__ = ["LanguageMiddleware"]


class LanguageMiddleware(BaseMiddleware):
    """Puts ``texts: Texts`` into the handler data of every update, in the language
    of its sender (``DEFAULT_LANGUAGE`` when Telegram gives neither ``ru*`` nor
    ``en*``). As an update middleware it also reaches the error handlers."""

    def __init__(self, default: Language) -> None:
        self._default = default

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user: User | None = data.get(EVENT_FROM_USER_KEY)
        data["texts"] = texts_for(user.language_code if user else None, self._default)
        return await handler(event, data)
