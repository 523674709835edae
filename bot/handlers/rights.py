"""Whether the bot may write in a chat, from Telegram's own updates about it.

``my_chat_member`` tells when an admin restricts the bot in a group (``restricted``
without ``can_send_messages``), removes it (``left``, ``kicked``) or gives it back
the right to write; a ``forum_topic_reopened`` message reopens a
topic that refused the bot. What is learnt goes to :class:`~bot.unwritable.Unwritable`,
which the answerer asks before it starts an answer.
"""

from __future__ import annotations

import logging

from aiogram import F, Router
from aiogram.enums import ChatType
from aiogram.types import (
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    ChatMemberRestricted,
    ChatMemberUpdated,
    Message,
)

from bot.storage.keys import ConversationKey
from bot.unwritable import Unwritable

__all__ = ["can_write", "create_router"]

log = logging.getLogger(__name__)

ChatMember = (
    ChatMemberOwner
    | ChatMemberAdministrator
    | ChatMemberMember
    | ChatMemberRestricted
    | ChatMemberLeft
    | ChatMemberBanned
)


def can_write(member: ChatMember) -> bool:
    if isinstance(member, ChatMemberRestricted):
        return member.is_member and member.can_send_messages
    return isinstance(member, ChatMemberOwner | ChatMemberAdministrator | ChatMemberMember)


async def on_my_chat_member(update: ChatMemberUpdated, unwritable: Unwritable) -> None:
    chat = ConversationKey(update.chat.id)
    status = update.new_chat_member.status
    if can_write(update.new_chat_member) or update.chat.type == ChatType.PRIVATE:
        # In private, "kicked" means blocked, and writing to the bot unblocks it: its
        # next message must be answered even if this update is handled after it.
        if unwritable.restore(chat):
            log.info("the bot may write in chat %s again (%s)", chat, status)
    else:
        log.info("the bot may not write in chat %s (%s)", chat, status)
        unwritable.add(chat)


async def on_topic_reopened(
    _: Message, unwritable: Unwritable, conversation: ConversationKey
) -> None:
    if unwritable.restore(conversation):
        log.info("topic %s was reopened", conversation)


def create_router() -> Router:
    router = Router(name="rights")
    router.my_chat_member.register(on_my_chat_member)
    router.message.register(on_topic_reopened, F.forum_topic_reopened)
    return router
