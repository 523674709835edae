"""Turning a message into the user's turn and handing it to the answerer."""

from __future__ import annotations

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.types import Message

from bot.addressing import user_turn
from bot.answering import Answerer
from bot.storage.keys import ConversationKey

__all__ = ["ask"]


async def ask(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey, prompt: str
) -> None:
    me = await bot.me()
    group = message.chat.type != ChatType.PRIVATE
    await answerer.prompt(bot, message, conversation, user_turn(message, prompt, me, group=group))
