"""Prompts: every text message (or media caption) in a private chat."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.types import Message

from bot.answering import Answerer
from bot.handlers.asking import ask
from bot.storage.keys import ConversationKey

__all__ = ["create_router"]

TEXT_ONLY = "I can only read text messages. Please send your question as text."
UNKNOWN_COMMAND = "I don't know that command. /help lists the ones I do."
EMPTY_PROMPT = "Your message is empty. What would you like to ask?"


async def on_unknown_command(message: Message) -> None:
    await message.answer(UNKNOWN_COMMAND)


async def on_text(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey
) -> None:
    text = (message.text or message.caption or "").strip()
    if not text:
        await message.answer(EMPTY_PROMPT)
        return
    await ask(message, bot, answerer, conversation, text)


async def on_other(message: Message) -> None:
    await message.answer(TEXT_ONLY)


def create_router() -> Router:
    router = Router(name="chat")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_unknown_command, F.text.startswith("/"))
    router.message.register(on_text, F.text)
    router.message.register(on_text, F.caption)  # a photo or document with a question
    router.message.register(on_other)  # stickers, photos, voice…: catch-all, last
    return router
