"""Prompts: every text message (or media caption) in a private chat."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.types import Message

from bot.answering import Answerer
from bot.conversation.paste_merger import PasteKey, PasteMerger, sender_of
from bot.entities_markdown import to_markdown
from bot.handlers.asking import ask
from bot.i18n import Texts
from bot.storage.keys import ConversationKey

__all__ = ["create_router"]


def _prompt(message: Message) -> str:
    """The text or caption, with the formatting the user sent as Markdown."""
    if message.text is not None:
        return to_markdown(message.text, message.entities)
    return to_markdown(message.caption or "", message.caption_entities)


async def on_unknown_command(
    message: Message, conversation: ConversationKey, paste_merger: PasteMerger, texts: Texts
) -> None:
    # A piece of a split paste may start with "/" (a path in a log, say).
    key = PasteKey(conversation, sender_of(message))
    if not await paste_merger.extend(key, message, _prompt(message)):
        await message.answer(texts.unknown_command)


async def on_text(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
    texts: Texts,
) -> None:
    prompt = _prompt(message)
    if not prompt.strip():
        await message.answer(texts.empty_prompt)
        return
    await ask(message, bot, answerer, conversation, paste_merger, prompt, texts)


async def on_other(message: Message, texts: Texts) -> None:
    await message.answer(texts.text_only)


def create_router() -> Router:
    router = Router(name="chat")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_unknown_command, F.text.startswith("/"))
    router.message.register(on_text, F.text)
    router.message.register(on_text, F.caption)  # a photo or document with a question
    router.message.register(on_other)  # stickers, photos, voice…: catch-all, last
    return router
