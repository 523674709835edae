"""A group that became a supergroup: its conversation moves to the new chat id.

Telegram announces it twice, in the old group (``migrate_to_chat_id``) and in the
new supergroup (``migrate_from_chat_id``); either one moves the history, the other
finds nothing left to move. An answer streaming at that moment follows by itself
(``bot/delivery/streaming.py``). A migrated group was no forum, so only its plain key moves.
"""

from __future__ import annotations

import logging

from aiogram import F, Router
from aiogram.types import Message

from bot.storage.history import HistoryStore
from bot.storage.keys import ConversationKey

__all__ = ["create_router"]

log = logging.getLogger(__name__)


async def _move(history: HistoryStore, old: int, new: int) -> None:
    log.info("group %s became supergroup %s: moving its conversation", old, new)
    await history.move(ConversationKey(old), ConversationKey(new))


async def on_migrated_to(message: Message, history: HistoryStore) -> None:
    assert message.migrate_to_chat_id is not None
    await _move(history, message.chat.id, message.migrate_to_chat_id)


async def on_migrated_from(message: Message, history: HistoryStore) -> None:
    assert message.migrate_from_chat_id is not None
    await _move(history, message.migrate_from_chat_id, message.chat.id)


def create_router() -> Router:
    router = Router(name="migration")
    router.message.register(on_migrated_to, F.migrate_to_chat_id)
    router.message.register(on_migrated_from, F.migrate_from_chat_id)
    return router
