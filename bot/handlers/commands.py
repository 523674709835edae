"""/start, /help, /new (/reset), /stop, /retry."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.answering import Answerer
from bot.storage.keys import ConversationKey

__all__ = ["COMMANDS", "router"]

router = Router(name="commands")
router.message.filter(F.chat.type == "private")

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


@router.message(CommandStart())
async def on_start(message: Message) -> None:
    name = message.from_user.first_name if message.from_user else "there"
    await message.answer(f"Hi, {name}! 👋\n\n{HELP}")


@router.message(Command("help"))
async def on_help(message: Message) -> None:
    await message.answer(HELP)


@router.message(Command("new", "reset"))
async def on_new(message: Message, answerer: Answerer, conversation: ConversationKey) -> None:
    await answerer.reset(conversation)
    await message.answer("🆕 New conversation. What would you like to talk about?")


@router.message(Command("stop"))
async def on_stop(message: Message, answerer: Answerer, conversation: ConversationKey) -> None:
    if not answerer.stop(conversation):
        await message.answer("Nothing to stop: no answer is being written.")


@router.message(Command("retry"))
async def on_retry(
    message: Message, bot: Bot, answerer: Answerer, conversation: ConversationKey
) -> None:
    await answerer.retry(bot, message, conversation)
