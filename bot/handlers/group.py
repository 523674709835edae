"""Groups and supergroups: answer only what is addressed to the bot.

A message is for the bot when it @mentions it (by entities), replies to one of its
messages, or is ``/ask <text>`` (handled with the other commands). Everything else
costs no API call: it is only looked at as a possible rest of a split paste.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.filters import Filter
from aiogram.types import Message

from bot.addressing import addressed, prompt_of, quote_of
from bot.answering import Answerer
from bot.conversation.paste_merger import PasteKey, PasteMerger, sender_of
from bot.handlers.asking import ask
from bot.i18n import Texts
from bot.storage.keys import ConversationKey

__all__ = ["create_router"]

GROUP_TYPES = {ChatType.GROUP, ChatType.SUPERGROUP}


class Addressed(Filter):
    """Passes messages for the bot, giving handlers the prompt as ``prompt``."""

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, str]:
        found = addressed(message, await bot.me())
        return False if found is None else {"prompt": found.prompt}


async def on_addressed(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
    prompt: str,
    texts: Texts,
) -> None:
    if message.text is None and message.caption is None:
        await message.reply(texts.group_text_only)
        return
    if not prompt:
        if quote_of(message, await bot.me()) is None:
            await message.reply(texts.only_mention)
            return
        prompt = texts.quote_question
    await ask(message, bot, answerer, conversation, paste_merger, prompt, texts)


async def on_rest_of_paste(
    message: Message, bot: Bot, conversation: ConversationKey, paste_merger: PasteMerger
) -> None:
    """The rest of a long paste does not mention the bot, but belongs to a question
    that did; anything else not addressed to the bot is left alone."""
    key = PasteKey(conversation, sender_of(message))
    await paste_merger.extend(key, message, prompt_of(message, await bot.me()))


def create_router() -> Router:
    router = Router(name="group")
    router.message.filter(F.chat.type.in_(GROUP_TYPES))
    router.message.register(on_addressed, Addressed())
    router.message.register(on_rest_of_paste, F.text | F.caption)
    return router
