"""The one place where the Dispatcher is assembled (the app and the tests use it)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.types import (
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
    BotCommandScopeChat,
)

from bot.answering import Answerer
from bot.handlers import routers
from bot.handlers.admin import admin_commands
from bot.handlers.commands import group_commands, private_commands
from bot.heartbeat import Heartbeat
from bot.i18n import CATALOGS, LANGUAGES, Language
from bot.middlewares.access import AccessMiddleware
from bot.middlewares.conversation import ConversationMiddleware
from bot.middlewares.language import LanguageMiddleware
from bot.middlewares.paste_order import PasteOrderMiddleware
from bot.middlewares.stale import StaleMessageMiddleware
from bot.storage.stats import Stats, keep_refreshing
from bot.tasks import stop_task

__all__ = ["create_dispatcher", "set_commands"]

log = logging.getLogger(__name__)


def create_dispatcher(
    *,
    answerer: Answerer,
    stats: Stats,
    admin_ids: frozenset[int] = frozenset(),
    allowed_user_ids: frozenset[int] = frozenset(),
    shutdown_timeout: float = 30.0,
    heartbeat_file: Path | None = None,
    max_message_age: float = 600.0,
    default_language: Language = "en",
    **data: Any,
) -> Dispatcher:
    """Routers, middlewares and the objects handlers receive by name (``answerer``,
    ``stats`` and whatever else is passed in ``data``, e.g. ``token_store``).

    On shutdown, running answers get ``shutdown_timeout`` seconds to finish. With
    ``heartbeat_file``, the file is kept fresh while the dispatcher runs
    (``bot/heartbeat.py``, the container's healthcheck).
    """
    dp = Dispatcher(answerer=answerer, stats=stats, **data)
    # Every update, errors included, gets its sender's texts (DEFAULT_LANGUAGE otherwise).
    dp.update.outer_middleware(LanguageMiddleware(default_language))
    # Access first: strangers get the same refusal whatever the age of their message.
    dp.message.outer_middleware(AccessMiddleware(allowed_user_ids, admin_ids))
    dp.message.outer_middleware(StaleMessageMiddleware(max_message_age))
    dp.message.outer_middleware(ConversationMiddleware(answerer.arrivals))
    # Innermost: it needs the conversation, and sees messages in arrival order.
    dp.message.outer_middleware(PasteOrderMiddleware())
    dp.include_routers(*routers(admin_ids=admin_ids))

    refresher: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        refresher.append(asyncio.create_task(keep_refreshing(stats)))

    async def on_shutdown() -> None:
        # aiogram stops polling without waiting for running handlers: we do.
        await answerer.drain(shutdown_timeout)
        for task in refresher:
            await stop_task(task)

    dp.startup.register(on_startup)
    dp.shutdown.register(on_shutdown)

    if heartbeat_file is not None:
        heartbeat = Heartbeat(heartbeat_file)
        # Registered after on_shutdown: the heartbeat lasts while answers finish.
        dp.startup.register(heartbeat.start)
        dp.shutdown.register(heartbeat.stop)
    return dp


async def set_commands(
    bot: Bot, admin_ids: frozenset[int] = frozenset(), default_language: Language = "en"
) -> None:
    """The command menus: private chats, groups, and admins' private chats (with the
    admin commands, which nobody else sees). Each in English and Russian, for users
    whose Telegram speaks them, and by default in ``default_language``."""
    menus: list[tuple[Language, str | None]] = [
        (default_language, None),
        *((language, language) for language in LANGUAGES),
    ]
    for language, code in menus:
        texts = CATALOGS[language]
        await bot.set_my_commands(
            private_commands(texts), scope=BotCommandScopeAllPrivateChats(), language_code=code
        )
        await bot.set_my_commands(
            group_commands(texts), scope=BotCommandScopeAllGroupChats(), language_code=code
        )
    for admin_id in sorted(admin_ids):
        try:
            for language, code in menus:
                texts = CATALOGS[language]
                await bot.set_my_commands(
                    [*private_commands(texts), *admin_commands(texts)],
                    scope=BotCommandScopeChat(chat_id=admin_id),
                    language_code=code,
                )
        except (TelegramBadRequest, TelegramForbiddenError) as exc:
            # "chat not found" until the admin has started a chat with the bot.
            log.warning("no admin command menu for %s yet: %s", admin_id, exc.message)
