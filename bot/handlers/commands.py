"""/start, /help, /ask, /new (/reset), /stop, /retry — in private chats and groups.

In groups a command counts only when it is for this bot: ``/new`` or
``/new@thisbot``; aiogram's ``Command`` filter drops ``/new@otherbot``. There
``/new`` stops everyone's answers and forgets the conversation, so only the chat's
administrators and the bot's admins may send it.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.addressing import prompt_of, quote_of
from bot.answering import Answerer, asker_of
from bot.chat_admins import IsChatAdmin
from bot.config import Settings
from bot.conversation.paste_merger import PasteMerger
from bot.handlers.asking import ask
from bot.i18n import Texts
from bot.providers import service_name
from bot.storage.keys import ConversationKey

__all__ = ["create_router", "group_commands", "private_commands"]


def private_commands(texts: Texts) -> list[BotCommand]:
    return [
        BotCommand(command="new", description=texts.cmd_new),
        BotCommand(command="stop", description=texts.cmd_stop),
        BotCommand(command="retry", description=texts.cmd_retry),
        BotCommand(command="help", description=texts.cmd_help),
    ]


def group_commands(texts: Texts) -> list[BotCommand]:
    return [BotCommand(command="ask", description=texts.cmd_ask), *private_commands(texts)]


def _help_for(message: Message, settings: Settings, texts: Texts) -> str:
    if message.chat.type != ChatType.PRIVATE:
        return texts.group_help
    service = service_name(settings.llm_providers)
    return texts.help.format(service=texts.a_language_model if service != "GPTalk" else service)


async def on_start(message: Message, settings: Settings, texts: Texts) -> None:
    name = message.from_user.first_name if message.from_user else texts.someone
    await message.answer(texts.start.format(name=name, help=_help_for(message, settings, texts)))


async def on_help(message: Message, settings: Settings, texts: Texts) -> None:
    await message.answer(_help_for(message, settings, texts))


async def on_ask(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
    texts: Texts,
) -> None:
    prompt = prompt_of(message, await bot.me(), command=True)
    if not prompt.strip():
        if quote_of(message, await bot.me()) is None:
            await message.reply(texts.ask_usage)
            return
        prompt = texts.quote_question
    await ask(message, bot, answerer, conversation, paste_merger, prompt, texts)


async def on_new(
    message: Message, answerer: Answerer, conversation: ConversationKey, texts: Texts
) -> None:
    await answerer.reset(conversation)
    await message.answer(texts.new_conversation)


async def on_new_refused(message: Message, texts: Texts) -> None:
    await message.reply(texts.new_admins_only)


async def on_stop(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey, texts: Texts
) -> None:
    """In a private chat: the answer being written. In a group: the sender's own;
    an admin (ADMIN_IDS) may stop any, by replying to it with /stop (or, with no
    answer of their own and no reply, all of them)."""
    if message.chat.type == ChatType.PRIVATE:
        if not await answerer.stop_anywhere(conversation):
            await message.answer(texts.nothing_to_stop)
        return
    if await answerer.stop_anywhere(conversation, asker_of(message)):
        return
    user = message.from_user
    if user is not None and message.sender_chat is None and user.id in answerer.admin_ids:
        reply = message.reply_to_message
        me = await bot.me()
        if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
            if await answerer.stop_anywhere(conversation, message_id=reply.message_id):
                return
        elif await answerer.stop_anywhere(conversation):
            return
        await message.reply(texts.nothing_to_stop)
        return
    running = await answerer.running_in(conversation)
    await message.reply(texts.nothing_of_yours if running else texts.nothing_to_stop)


async def on_retry(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey, texts: Texts
) -> None:
    await answerer.retry(bot, message, conversation, texts=texts)


def create_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="commands")
    router.message.filter(F.forward_origin.is_(None))  # a forwarded command is not a command
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_ask, Command("ask"))
    # The command first: only a /new costs a getChatMember.
    router.message.register(on_new, Command("new", "reset"), IsChatAdmin(admin_ids))
    router.message.register(on_new_refused, Command("new", "reset"))
    router.message.register(on_stop, Command("stop"))
    router.message.register(on_retry, Command("retry"))
    return router
