"""/start, /help, /ask, /new (/reset), /stop, /retry — in private chats and groups.

In groups a command counts only when it is for this bot: ``/new`` or
``/new@thisbot``; aiogram's ``Command`` filter drops ``/new@otherbot``.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.addressing import prompt_of, quote_of
from bot.answering import Answerer, asker_of
from bot.config import Settings
from bot.handlers.asking import ask
from bot.paste_merger import PasteMerger
from bot.providers import service_name
from bot.storage.keys import ConversationKey

__all__ = ["GROUP_COMMANDS", "PRIVATE_COMMANDS", "create_router"]

PRIVATE_COMMANDS = [
    BotCommand(command="new", description="Start a new conversation"),
    BotCommand(command="stop", description="Stop the answer being written"),
    BotCommand(command="retry", description="Answer the last message again"),
    BotCommand(command="help", description="How to use this bot"),
]
GROUP_COMMANDS = [
    BotCommand(command="ask", description="Ask me something"),
    *PRIVATE_COMMANDS,
]

HELP = (
    "Send me any message and I'll answer it with {service}, writing the answer as it "
    "comes in. I remember our conversation, so you can ask follow-up questions.\n\n"
    "/new — start a new conversation (also /reset)\n"
    "/stop — stop the answer being written\n"
    "/retry — answer your last message again\n"
    "/help — this message"
)
GROUP_HELP = (
    "In this group I answer when you mention me, reply to one of my messages, or use "
    "/ask <question>. Reply to someone's message with /ask to ask me about it. "
    "Each group (and each forum topic) is one conversation.\n\n"
    "/new — start a new conversation here (also /reset)\n"
    "/stop — stop the answer being written\n"
    "/retry — answer the last question again"
)
ASK_USAGE = "Usage: /ask <question> — or reply to a message with /ask."


def _help_for(message: Message, settings: Settings) -> str:
    if message.chat.type != ChatType.PRIVATE:
        return GROUP_HELP
    service = service_name(settings.llm_providers)
    return HELP.format(service="a language model" if service != "GPTalk" else service)


async def on_start(message: Message, settings: Settings) -> None:
    name = message.from_user.first_name if message.from_user else "there"
    await message.answer(f"Hi, {name}! 👋\n\n{_help_for(message, settings)}")


async def on_help(message: Message, settings: Settings) -> None:
    await message.answer(_help_for(message, settings))


async def on_ask(
    message: Message,
    bot: Bot,
    answerer: Answerer,
    conversation: ConversationKey,
    paste_merger: PasteMerger,
) -> None:
    prompt = prompt_of(message, await bot.me(), command=True)
    if not prompt.strip():
        if quote_of(message, await bot.me()) is None:
            await message.reply(ASK_USAGE)
            return
        prompt = "What do you say to this?"
    await ask(message, bot, answerer, conversation, paste_merger, prompt)


async def on_new(message: Message, answerer: Answerer, conversation: ConversationKey) -> None:
    await answerer.reset(conversation)
    await message.answer("🆕 New conversation. What would you like to talk about?")


NOTHING_TO_STOP = "Nothing to stop: no answer is being written."
NOTHING_OF_YOURS = "Nothing to stop: none of the answers being written here is yours."


async def on_stop(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey
) -> None:
    """In a private chat: the answer being written. In a group: the sender's own;
    an admin (ADMIN_IDS) may stop any, by replying to it with /stop (or, with no
    answer of their own and no reply, all of them)."""
    if message.chat.type == ChatType.PRIVATE:
        if not await answerer.stop_anywhere(conversation):
            await message.answer(NOTHING_TO_STOP)
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
        await message.reply(NOTHING_TO_STOP)
        return
    running = await answerer.running_in(conversation)
    await message.reply(NOTHING_OF_YOURS if running else NOTHING_TO_STOP)


async def on_retry(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey
) -> None:
    await answerer.retry(bot, message, conversation)


def create_router() -> Router:
    router = Router(name="commands")
    router.message.filter(F.forward_origin.is_(None))  # a forwarded command is not a command
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_ask, Command("ask"))
    router.message.register(on_new, Command("new", "reset"))
    router.message.register(on_stop, Command("stop"))
    router.message.register(on_retry, Command("retry"))
    return router
