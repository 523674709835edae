"""The Stop button under a streaming answer, and the stop button of a draft.

The button's callback data is ``stop:<token>``, a random token that the answerer
maps to the running answer: nothing in it is trusted (who asked is looked up), and
a token of an answer that ended, or one never made, is refused politely. Every
callback query is answered, so that the user's client stops its spinner.

In draft mode (``STREAM_MODE=draft``) the draft's native stop button arrives as a
``stopped_message_generation`` update; drafts exist only in private chats, so the
one who pressed it is the one who asked.
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

__all__ = ["CALLBACK_PREFIX", "create_router", "stop_keyboard"]

# User-facing texts of this feature (plain English; the i18n catalog takes them over).
STOP_BUTTON = "⏹ Stop"
STOPPING = "Stopped."
NOT_YOURS = "Only the person who asked can stop this answer"
ENDED = "This answer has already ended"

CALLBACK_PREFIX = "stop:"

_ANSWERS = {StopOutcome.STOPPED: STOPPING, StopOutcome.NOT_YOURS: NOT_YOURS}


def stop_keyboard(token: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=STOP_BUTTON, callback_data=CALLBACK_PREFIX + token)]
        ]
    )


async def on_stop_button(query: CallbackQuery, answerer: Answerer) -> None:
    token = (query.data or "").removeprefix(CALLBACK_PREFIX)
    outcome = answerer.stop_by_button(token, query.from_user.id)
    await query.answer(_ANSWERS.get(outcome, ENDED))


async def on_other_button(query: CallbackQuery) -> None:
    # Not ours (an old keyboard, a forged query): still answered, or the client spins.
    await query.answer(ENDED)


async def on_draft_stopped(event: MessageGenerationStopped, answerer: Answerer) -> None:
    answerer.stop_draft(event.chat.id, event.draft_id)


def create_router() -> Router:
    router = Router(name="stop")
    router.callback_query.register(on_stop_button, F.data.startswith(CALLBACK_PREFIX))
    router.callback_query.register(on_other_button)
    router.stopped_message_generation.register(on_draft_stopped)
    return router
