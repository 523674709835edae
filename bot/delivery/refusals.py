"""What Telegram's failures mean for a call, decided in one place.

Telegram says why it refused a call only in the description of a 400 (403 and 404
mean the chat is out of reach whatever the text). :func:`refusal_of` maps those
descriptions to a :class:`Refusal`, so that the code delivering messages decides
on the kind of refusal instead of searching the strings itself. :data:`TRANSIENT`
are the failures that say nothing against the call: the same call may go through
later.
"""

from __future__ import annotations

import enum
from typing import Final

from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)

__all__ = ["TRANSIENT", "Refusal", "brief", "refusal_of"]


class Refusal(enum.Enum):
    NOT_MODIFIED = "not modified"  # the edit would change nothing: the message is as wanted
    MESSAGE_GONE = "message gone"  # deleted by the user, or too old to edit
    CHAT_GONE = "chat gone"  # the bot was blocked or removed, or the chat deleted
    NO_RIGHTS = "no rights"  # the bot is in the chat but may not write there
    TOPIC_GONE = "topic gone"  # the forum topic was closed or deleted
    BAD_ENTITIES = "bad entities"  # the formatting was rejected; plain text may go
    OTHER = "other"  # anything else: this call will not go through as it is


# Telegram's descriptions (lower case), checked in this order.
_DESCRIPTIONS: Final = (
    (
        Refusal.NO_RIGHTS,
        (
            "not enough rights",
            "have no rights to send",
            "chat_write_forbidden",
            "chat_restricted",
            "need administrator rights",
        ),
    ),
    (Refusal.TOPIC_GONE, ("topic_closed", "topic_deleted", "message thread not found")),
    (Refusal.CHAT_GONE, ("chat not found",)),
    (Refusal.BAD_ENTITIES, ("can't parse entities",)),
    (Refusal.NOT_MODIFIED, ("message is not modified",)),
    (Refusal.MESSAGE_GONE, ("message to edit not found", "can't be edited")),
)

# ClientDecodeError: a proxy in front of the Bot API answers with an HTML page when
# the API behind it is down.
TRANSIENT: Final = (
    TelegramRetryAfter,
    TelegramNetworkError,
    TelegramServerError,
    ClientDecodeError,
)


def refusal_of(exc: TelegramBadRequest | TelegramForbiddenError | TelegramNotFound) -> Refusal:
    if isinstance(exc, TelegramForbiddenError | TelegramNotFound):
        return Refusal.CHAT_GONE
    description = exc.message.lower()
    for refusal, markers in _DESCRIPTIONS:
        if any(marker in description for marker in markers):
            return refusal
    return Refusal.OTHER


def brief(exc: TelegramAPIError | ClientDecodeError) -> str:
    """For a log line."""
    if isinstance(exc, ClientDecodeError):  # its text holds the whole page: not for logs
        return f"unreadable response ({type(exc.original).__name__})"
    return str(exc)
