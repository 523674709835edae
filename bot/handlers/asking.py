"""Turning a message into the user's turn and handing it to the answerer."""

from __future__ import annotations

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.types import Message

from bot.addressing import user_turn
from bot.answering import Answerer
from bot.conversation.paste_merger import PasteKey, PasteMerger, TooLong, near_limit, sender_of
from bot.i18n import Texts
from bot.storage.keys import ConversationKey

__all__ = ["ask"]


async def ask(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
    prompt: str,
    texts: Texts,
) -> None:
    if near_limit(message):
        # Maybe the first piece of a split paste: it waits for the rest, and must not
        # hold up later messages of the conversation meanwhile. It takes its place in
        # the line when the paste is complete.
        await answerer.arrivals.leave(conversation, message.message_id)
    # A piece of a split paste waits for the rest, or joins the paste waiting for it.
    merged = await paste_merger.merge(PasteKey(conversation, sender_of(message)), message, prompt)
    if merged is None:
        return
    first = merged.first
    if isinstance(merged, TooLong):
        # Not cut to fit: the model would answer the part as if it were the whole.
        await first.reply(texts.too_long.format(chars=merged.chars, limit=merged.limit))
        return
    if not merged.prompt.strip():
        await first.reply(texts.empty_prompt)
        return
    me = await bot.me()
    group = first.chat.type != ChatType.PRIVATE
    turn = user_turn(first, merged.prompt, me, group=group)
    await answerer.prompt(bot, first, conversation, turn, texts=texts, parts=merged.parts)
