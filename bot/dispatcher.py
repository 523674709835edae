"""The one place where the Dispatcher is assembled (the app and the tests use it)."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import BotCommandScopeAllPrivateChats

from bot.answering import Answerer
from bot.handlers import routers
from bot.handlers.commands import COMMANDS
from bot.middlewares.conversation import ConversationMiddleware

__all__ = ["create_dispatcher", "set_commands"]

log = logging.getLogger(__name__)


def create_dispatcher(*, answerer: Answerer, shutdown_timeout: float, **data: Any) -> Dispatcher:
    """Routers, middlewares and the objects handlers receive by name (``answerer``
    and whatever else is passed in ``data``). On shutdown, running answers get
    ``shutdown_timeout`` seconds to finish."""
    dp = Dispatcher(answerer=answerer, **data)
    dp.message.outer_middleware(ConversationMiddleware())
    dp.include_routers(*routers())

    async def on_shutdown() -> None:
        # aiogram stops polling without waiting for running handlers: we do.
        await answerer.drain(shutdown_timeout)

    dp.shutdown.register(on_shutdown)
    return dp


async def set_commands(bot: Bot) -> None:
    """The command menu (private chats)."""
    await bot.set_my_commands(COMMANDS, scope=BotCommandScopeAllPrivateChats())
