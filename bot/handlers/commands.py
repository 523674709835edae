"""/start, /help, /new (/reset), /stop, /retry."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.answering import Answerer
from bot.storage.keys import ConversationKey

__all__ = ["COMMANDS", "create_router"]

COMMANDS = [
    BotCommand(command="new", description="Start a new conversation"),
    BotCommand(command="stop", description="Stop the answer being written"),
    BotCommand(command="retry", description="Answer the last message again"),
    BotCommand(command="help", description="How to use this bot"),
]

HELP = (
    "Send me any message and I'll answer it with GPTalk, writing the answer as it "
    "comes in. I remember our conversation, so you can ask follow-up questions.\n\n"
    "/new — start a new conversation (also /reset)\n"
    "/stop — stop the answer being written\n"
    "/retry — answer your last message again\n"
    "/help — this message"
)


async def on_start(message: Message) -> None:
    name = message.from_user.first_name if message.from_user else "there"
    await message.answer(f"Hi, {name}! 👋\n\n{HELP}")


async def on_help(message: Message) -> None:
    await message.answer(HELP)


async def on_new(message: Message, answerer: Answerer, conversation: ConversationKey) -> None:
    await answerer.reset(conversation)
    await message.answer("🆕 New conversation. What would you like to talk about?")


async def on_stop(message: Message, answerer: Answerer, conversation: ConversationKey) -> None:
    if not answerer.stop(conversation):
        await message.answer("Nothing to stop: no answer is being written.")


async def on_retry(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey
) -> None:
    await answerer.retry(bot, message, conversation)


def create_router() -> Router:
    router = Router(name="commands")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_new, Command("new", "reset"))
    router.message.register(on_stop, Command("stop"))
    router.message.register(on_retry, Command("retry"))
    return router
