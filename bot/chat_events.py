"""Service messages about the chat itself (not prompts), which the bot must handle
whoever sent them and however late they arrive."""

from __future__ import annotations

from aiogram.types import Message

__all__ = ["is_chat_event"]


def is_chat_event(message: Message) -> bool:
    return (
        message.migrate_to_chat_id is not None
        or message.migrate_from_chat_id is not None
        or message.forum_topic_reopened is not None
    )
