"""Prompts: every text message (or media caption) in a private chat."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.types import Message

from bot.answering import Answerer
from bot.entities_markdown import to_markdown
from bot.handlers.asking import ask
from bot.paste_merger import PasteKey, PasteMerger, sender_of
from bot.storage.keys import ConversationKey

__all__ = ["create_router"]

TEXT_ONLY = "I can only read text messages. Please send your question as text."
UNKNOWN_COMMAND = "I don't know that command. /help lists the ones I do."
EMPTY_PROMPT = "Your message is empty. What would you like to ask?"


def _prompt(message: Message) -> str:
    """The text or caption, with the formatting the user sent as Markdown."""
    if message.text is not None:
        return to_markdown(message.text, message.entities)
    return to_markdown(message.caption or "", message.caption_entities)


async def on_unknown_command(
    message: Message, conversation: ConversationKey, paste_merger: PasteMerger
) -> None:
    # A piece of a split paste may start with "/" (a path in a log, say).
    key = PasteKey(conversation, sender_of(message))
    if not await paste_merger.extend(key, message, _prompt(message)):
        await message.answer(UNKNOWN_COMMAND)


async def on_text(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
) -> None:
    prompt = _prompt(message)
    if not prompt.strip():
        await message.answer(EMPTY_PROMPT)
        return
    await ask(message, bot, answerer, conversation, paste_merger, prompt)


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
