"""Whether a group message is for the bot, and what the prompt is.

In groups the bot answers only when it is @mentioned (by the message's entities,
never by substring), when the message replies to one of its own messages, or via
``/ask``. Photo and document captions count like text.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.types import Message, MessageEntity, User

from bot.entities_markdown import from_units, to_markdown, to_units

__all__ = [
    "Addressed",
    "addressed",
    "prompt_of",
    "quote_of",
    "speaker",
    "strip_mentions",
    "user_turn",
]

QUOTE_LIMIT = 1500
_BLANK = " \t"
_PUNCTUATION = ",.;:!?"


@dataclass(frozen=True)
class Addressed:
    prompt: str  # the message as Markdown, without the bot's mentions (may be empty)


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


def _removal(units: str, start: int, end: int) -> tuple[int, int]:
    """What goes with the mention at ``units[start:end]``: the mention and only the
    whitespace (or ", ") that would be left dangling around it. Everything further
    away stays as typed: indentation and runs of spaces in code matter."""
    size = len(units)
    left, right = start, end
    while left > 0 and units[left - 1] in _BLANK:
        left -= 1
    while right < size and units[right] in _BLANK:
        right += 1
    if right == size:  # "what is this? @bot": trailing whitespace is never meaningful
        while left > 0 and units[left - 1].isspace():
            left -= 1
        return left, size
    if left == 0:  # "@bot, what is", "@bot\n\n    code"
        if units[right] in ",:":
            right += 1
            while right < size and units[right] in _BLANK:
                right += 1
        # The lines the mention leaves empty go; the indentation of the next stays.
        scan = right
        while scan < size and units[scan].isspace():
            scan += 1
            if units[scan - 1] == "\n":
                right = scan
        return 0, right
    starts_line = units[left - 1] == "\n"
    if units[right] == "\n":  # "see @bot\n  code"; alone on its line, the line goes
        return left, right + 1 if starts_line else right
    if starts_line:  # keep the line's indentation
        if units[right] in ",:":
            right += 1
            while right < size and units[right] in _BLANK:
                right += 1
        return start, right
    if units[right] in _PUNCTUATION:  # "Hey @bot, you" → "Hey, you"
        return left, right
    # "Tell me @bot what" → "Tell me what"; glued to the word before: keep a space.
    return (start, right) if left < start else (start, end)


def _shifted(position: int, cut_start: int, cut_end: int) -> int:
    if position <= cut_start:
        return position
    return max(cut_start, position - (cut_end - cut_start))


def strip_mentions(
    text: str, entities: list[MessageEntity], spans: list[tuple[int, int]]
) -> tuple[str, list[MessageEntity]]:
    """``text`` without the UTF-16 ``spans`` (and the whitespace each leaves
    dangling), with ``entities`` moved to where their text now is."""
    units = to_units(text)
    remaining = sorted(spans)
    while remaining:
        # Right to left: a cut never moves the mentions before it.
        offset, length = remaining.pop()
        cut_start, cut_end = _removal(units, offset, offset + length)
        units = units[:cut_start] + units[cut_end:]
        moved = []
        for entity in entities:
            begin = _shifted(entity.offset, cut_start, cut_end)
            finish = _shifted(entity.offset + entity.length, cut_start, cut_end)
            if finish > begin:
                moved.append(entity.model_copy(update={"offset": begin, "length": finish - begin}))
        entities = moved
    return from_units(units), entities


def prompt_of(message: Message, me: User, *, command: bool = False) -> str:
    """The message as the model should read it: its formatting as Markdown, without
    the bot's mentions (and, with ``command``, without the leading ``/command``)."""
    text, entities = _text_and_entities(message)
    spans = _mentions_of(text, entities, me)
    if command:  # "/ask@bot": what Telegram marks as the bot_command entity
        word = text.split(maxsplit=1)[0] if text.strip() else ""
        spans.append((0, len(to_units(word))))
    text, entities = strip_mentions(text, entities, spans)
    return to_markdown(text, entities)


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
    return Addressed(prompt_of(message, me))


def quote_of(message: Message, me: User) -> str | None:
    """Quoted context: the text of the message this one replies to, unless it is the
    bot's own (that one is already in the history) or a forum topic's header."""
    reply = message.reply_to_message
    if reply is None or (reply.from_user is not None and reply.from_user.id == me.id):
        return None
    if reply.forum_topic_created is not None:
        return None
    text = to_markdown(*_text_and_entities(reply))
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
