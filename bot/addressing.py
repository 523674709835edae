"""Whether a group message is for the bot, and what the prompt is.

In groups the bot answers only when it is @mentioned (by the message's entities,
never by substring), when the message replies to one of its own messages, or via
``/ask``. Photo and document captions count like text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiogram.types import Message, MessageEntity, User

__all__ = ["Addressed", "addressed", "quote_of", "speaker", "strip_mentions", "user_turn"]

QUOTE_LIMIT = 1500
_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+([,.;:!?])")  # "Hey @bot, you" → "Hey, you"


@dataclass(frozen=True)
class Addressed:
    prompt: str  # the message text without the bot's mentions (may be empty)


def _text_and_entities(message: Message) -> tuple[str, list[MessageEntity]]:
    if message.text is not None:
        return message.text, list(message.entities or [])
    return message.caption or "", list(message.caption_entities or [])


def _mentions_of(text: str, entities: list[MessageEntity], me: User) -> list[tuple[int, int]]:
    """UTF-16 (offset, length) of every mention of ``me`` in the text."""
    found = []
    for entity in entities:
        if entity.type == "mention":
            handle = entity.extract_from(text)
            if me.username and handle.lower() == f"@{me.username.lower()}":
                found.append((entity.offset, entity.length))
        elif entity.type == "text_mention" and entity.user is not None and entity.user.id == me.id:
            found.append((entity.offset, entity.length))
    return found


def strip_mentions(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove UTF-16 spans from ``text`` and tidy the whitespace left behind."""
    if not spans:
        return text.strip()
    encoded = text.encode("utf-16-le")
    for offset, length in sorted(spans, reverse=True):
        encoded = encoded[: offset * 2] + encoded[(offset + length) * 2 :]
    stripped = _SPACES.sub(" ", encoded.decode("utf-16-le"))
    stripped = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", stripped).strip()
    # "@bot, what is…" → "what is…"
    return stripped.removeprefix(",").removeprefix(":").strip()


def addressed(message: Message, me: User) -> Addressed | None:
    """The prompt when ``message`` (in a group) is for the bot, else None."""
    text, entities = _text_and_entities(message)
    mentions = _mentions_of(text, entities, me)
    reply = message.reply_to_message
    replies_to_me = (
        reply is not None and reply.from_user is not None and reply.from_user.id == me.id
    )
    # In forum topics every message "replies" to the topic's first message; only a
    # reply to one of the bot's own messages counts.
    if not mentions and not replies_to_me:
        return None
    return Addressed(strip_mentions(text, mentions))


def quote_of(message: Message, me: User) -> str | None:
    """Quoted context: the text of the message this one replies to, unless it is the
    bot's own (that one is already in the history) or a forum topic's header."""
    reply = message.reply_to_message
    if reply is None or (reply.from_user is not None and reply.from_user.id == me.id):
        return None
    if reply.forum_topic_created is not None:
        return None
    text, _ = _text_and_entities(reply)
    if not text.strip():
        return None
    author = speaker(reply)
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT] + "…"
    quoted = "\n".join(f"> {line}" for line in text.strip().splitlines())
    return f"{author} wrote:\n{quoted}"


def speaker(message: Message) -> str:
    """Who wrote ``message``, as the model should see it.

    Messages sent on behalf of a chat come from a service account (an anonymous
    admin's ``from`` is "Group"): name them by the chat, or the admin's signature.
    """
    chat = message.sender_chat
    if chat is not None:
        if chat.id == message.chat.id:
            return message.author_signature or "Anonymous admin"
        return chat.title or "A channel"
    return message.from_user.first_name if message.from_user else "Someone"


def user_turn(message: Message, prompt: str, me: User, *, group: bool) -> str:
    """The user's turn as stored in the history: in groups prefixed with the sender's
    first name so the model can tell speakers apart, with any quoted context first."""
    quote = quote_of(message, me)
    if group:
        prompt = f"{speaker(message)}: {prompt}"
    return f"{quote}\n\n{prompt}" if quote else prompt
