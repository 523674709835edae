"""Who administers a chat, as Telegram says (``getChatMember``), remembered for a minute.

Group settings that affect everyone there (``/new`` now; personas and model picks
next) belong to the chat's administrators and to the bot's own admins
(``ADMIN_IDS``). Telegram is asked once per (chat, user) a minute: a burst of
commands costs one call, and a promotion or demotion takes effect within a minute.
A failed check is not remembered and raises: the caller refuses (fails closed)
rather than guess.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from aiogram.filters import Filter
from aiogram.types import ChatMemberAdministrator, ChatMemberOwner, Message

from bot.storage.expiry import ExpiringMap

__all__ = ["ADMIN_TTL", "ChatAdmins", "ChatAdminsUnavailableError", "IsAdmin", "IsChatAdmin"]

ADMIN_TTL = 60.0  # seconds an answer of getChatMember is trusted


class ChatAdminsUnavailableError(Exception):
    """Telegram did not say whether the user administers the chat (a network error,
    a refusal, an answer that is not the Bot API's)."""


class ChatAdmins:
    """Whether a user administers a chat, cached per (chat, user) for ``ttl`` seconds.

    One per process, built by the composition root. The cache holds at most the
    answers of the last ``ttl`` seconds (each write sweeps the expired ones), so it
    stays as small as the rate of the commands that ask.
    """

    def __init__(
        self, ttl: float = ADMIN_TTL, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._known: ExpiringMap[tuple[int, int], bool] = ExpiringMap(ttl, clock=clock)

    async def is_admin(self, bot: Bot, chat_id: int, user_id: int) -> bool:
        """The chat's creator or one of its administrators (anonymous ones too).
        Raises :class:`ChatAdminsUnavailableError` when Telegram does not tell."""
        key = (chat_id, user_id)
        known = self._known.get(key)
        if known is not None:
            return known
        try:
            member = await bot.get_chat_member(chat_id, user_id)
        except TelegramAPIError as exc:
            raise ChatAdminsUnavailableError(
                f"getChatMember({chat_id}, {user_id}): {exc.message}"
            ) from exc
        except ClientDecodeError as exc:  # its text holds the whole page: not for logs
            raise ChatAdminsUnavailableError(
                f"getChatMember({chat_id}, {user_id}): not a Bot API answer"
            ) from exc
        admin = isinstance(member, ChatMemberOwner | ChatMemberAdministrator)
        self._known.put(key, admin)
        return admin

    async def sent_by_admin(self, bot: Bot, message: Message) -> bool:
        """Whether the sender of ``message`` administers its chat. In a private chat
        the user does; an anonymous admin writes as the chat itself (``sender_chat``
        is the chat), which only its administrators can; a linked channel or any
        other chat writing there does not administer it."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        if message.sender_chat is not None:
            return message.sender_chat.id == message.chat.id
        if message.from_user is None:
            return False
        return await self.is_admin(bot, message.chat.id, message.from_user.id)


class IsAdmin(Filter):
    """Passes messages the bot's own admins (``ADMIN_IDS``) wrote themselves: not sent as
    a chat, not forwarded, not from a bot."""

    def __init__(self, admin_ids: frozenset[int]) -> None:
        self._admin_ids = admin_ids

    async def __call__(self, message: Message) -> bool:
        user = message.from_user
        return (
            user is not None
            and not user.is_bot
            and user.id in self._admin_ids
            and message.sender_chat is None
            and message.forward_origin is None
        )


class IsChatAdmin(Filter):
    """Passes messages from the chat's administrators and from the bot's admins
    (``ADMIN_IDS``, as :class:`IsAdmin`); in private chats, every message.

    When Telegram cannot tell, :class:`ChatAdminsUnavailableError` goes on to the
    errors router, which tells the sender that nothing was done.
    """

    def __init__(self, admin_ids: frozenset[int]) -> None:
        self._bot_admin = IsAdmin(admin_ids)

    async def __call__(self, message: Message, bot: Bot, chat_admins: ChatAdmins) -> bool:
        if await self._bot_admin(message):
            return True  # no call to Telegram for the bot's own admins
        return await chat_admins.sent_by_admin(bot, message)
