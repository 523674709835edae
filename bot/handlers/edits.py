"""Edit to regenerate: a user who edits the message that started their last answer
in the conversation gets the edited text answered anew.

The answerer decides whether the message is that one (edits to older messages are
ignored) and what to do: a prompt still waiting in line is updated in place, a
running answer is stopped first; the history then holds the new question and its
answer instead of the old ones. In groups only a message addressed to the bot
counts (a mention, a reply to the bot, or ``/ask``).
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.types import Message

from bot.addressing import addressed, prompt_of, user_turn
from bot.answering import Answerer
from bot.entities_markdown import to_markdown
from bot.i18n import Texts
from bot.middlewares.conversation import conversation_of

__all__ = ["create_router"]


def _private_prompt(message: Message) -> str | None:
    if message.text is not None:
        if message.text.startswith("/"):
            return None  # a command now: not a question to answer
        return to_markdown(message.text, message.entities)
    return to_markdown(message.caption or "", message.caption_entities)


async def on_edited(message: Message, bot: Bot, answerer: Answerer, texts: Texts) -> None:
    me = await bot.me()
    group = message.chat.type != ChatType.PRIVATE
    prompt: str | None
    if not group:
        prompt = _private_prompt(message)
    elif (message.text or "").split(maxsplit=1)[:1] in (["/ask"], [f"/ask@{me.username}"]):
        prompt = prompt_of(message, me, command=True)
    else:
        found = addressed(message, me)
        prompt = found.prompt if found is not None else None
    if prompt is None or not prompt.strip():
        return
    text = user_turn(message, prompt, me, group=group)
    await answerer.regenerate(
        bot, message, conversation_of(message), {"role": "user", "content": text}, texts=texts
    )


def create_router() -> Router:
    router = Router(name="edits")
    router.edited_message.filter(F.forward_origin.is_(None))
    router.edited_message.register(on_edited, F.text | F.caption)
    return router
