"""The Stop button under a streaming answer, and the stop button of a draft.

The button's callback data is ``stop:<token>``, a random token that the answerer
maps to the running answer: nothing in it is trusted (who asked is looked up), and
a token of an answer that ended, or one never made, is refused politely. Every
callback query is answered, so that the user's client stops its spinner.

In draft mode (``STREAM_MODE=draft``) the draft's native stop button arrives as a
``stopped_message_generation`` update; drafts exist only in private chats, so the
one who pressed it is the one who asked. Like the Stop button, it reaches the
answer in whichever replica streams it.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MessageGenerationStopped,
)

from bot.answering import Answerer, StopOutcome
from bot.i18n import Texts

__all__ = ["CALLBACK_PREFIX", "create_router", "stop_keyboard"]


CALLBACK_PREFIX = "stop:"


def stop_keyboard(token: str, label: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=label, callback_data=CALLBACK_PREFIX + token)]]
    )


async def on_stop_button(query: CallbackQuery, answerer: Answerer, texts: Texts) -> None:
    token = (query.data or "").removeprefix(CALLBACK_PREFIX)
    outcome = await answerer.stop_by_button(token, query.from_user.id)
    answers = {StopOutcome.STOPPED: texts.stop_done, StopOutcome.NOT_YOURS: texts.stop_not_yours}
    await query.answer(answers.get(outcome, texts.stop_stale))


async def on_other_button(query: CallbackQuery, texts: Texts) -> None:
    # Not ours (an old keyboard, a forged query): still answered, or the client spins.
    await query.answer(texts.stop_stale)


async def on_draft_stopped(event: MessageGenerationStopped, answerer: Answerer) -> None:
    await answerer.stop_draft(event.chat.id, event.draft_id)


def create_router() -> Router:
    router = Router(name="stop")
    router.callback_query.register(on_stop_button, F.data.startswith(CALLBACK_PREFIX))
    router.callback_query.register(on_other_button)
    router.stopped_message_generation.register(on_draft_stopped)
    return router
