"""One prompt for a paste that Telegram split into several messages.

Telegram clients cut text longer than 4096 UTF-16 units into several messages.
Telegram Desktop (``CutPart`` in desktop-app/lib_ui ``ui/text/text_entity.cpp``)
cuts at the best break in the second half of the limit — a blank line, a line
end, a space after a sentence, a space — and the server trims each part, so the
character at the cut is lost. Without merging, the bot would answer the first
half before the rest arrives.

A message within ~100 units of the limit therefore waits ``MERGE_WINDOW`` seconds
for more messages from the same sender in the same conversation. A continuation
that is itself near the limit waits for the next one; a shorter one is the last
piece and ends the wait at once. Short messages never wait.

The pieces are joined with a newline: the cut prefers line ends, and where it was
a space, a newline reads the same to a model, while joining with nothing would
glue two words together.

A paste is capped (:class:`PasteLimits`): at ``PASTE_MAX_PARTS`` pieces and at
``PROMPT_MAX_CHARS`` characters in all. Pieces beyond the caps still join the paste
(otherwise each would be answered on its own) but are only counted, and the whole
paste is refused (:class:`TooLong`). Each paste owns its pieces: one that is
complete but not yet collected by the process that waits for it is never touched
by the next paste of the same sender.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from aiogram.types import Message

from bot.storage.keys import ConversationKey

__all__ = [
    "JOINER",
    "NEAR_LIMIT",
    "ArrivalOrder",
    "MemoryPasteMerger",
    "Merged",
    "PasteKey",
    "PasteLimits",
    "PasteMerger",
    "Tally",
    "TooLong",
    "alone",
    "near_limit",
    "outcome",
    "sender_of",
]

NEAR_LIMIT = 4096 - 100  # UTF-16 units: a message this long may be a split paste
JOINER = "\n"


@dataclass(frozen=True)
class PasteKey:
    """Whose paste: one sender in one conversation."""

    conversation: ConversationKey
    sender: int


@dataclass(frozen=True)
class PasteLimits:
    max_parts: int = 8  # PASTE_MAX_PARTS
    max_chars: int = 12000  # PROMPT_MAX_CHARS: the whole paste, joiners included


@dataclass(frozen=True)
class Merged:
    first: Message  # the answer replies to the first piece
    prompt: str
    parts: int = 1  # the messages it was made of: each counts for USER_RATE_LIMIT


@dataclass(frozen=True)
class TooLong:
    """A prompt over a cap: nothing goes upstream, the user is told to send a file."""

    first: Message
    chars: int  # the whole prompt, joiners included
    limit: int  # the most of it that could be taken


@dataclass
class Tally:
    """A paste's size so far, as the caps see it (the Redis scripts keep the same)."""

    parts: int = 0
    chars: int = 0  # of the pieces joined, every piece counted
    kept: int = 0  # of the first ``max_parts`` pieces joined

    def add(self, length: int, limits: PasteLimits) -> bool:
        """Count a piece of ``length`` characters; True while it is worth keeping
        (within both caps: beyond them the paste is refused, so its text is not
        needed, and holding it would let a flood of pieces grow without bound)."""
        self.parts += 1
        self.chars += length + (len(JOINER) if self.parts > 1 else 0)
        if self.parts > limits.max_parts:
            return False
        self.kept = self.chars
        return self.chars <= limits.max_chars


def outcome(
    first: Message, pieces: Sequence[str], tally: Tally, limits: PasteLimits
) -> Merged | TooLong:
    """What a paste of ``tally``'s size makes; ``pieces`` are its kept pieces, in order."""
    if tally.parts <= limits.max_parts and tally.chars <= limits.max_chars:
        return Merged(first, JOINER.join(pieces), tally.parts)
    limit = limits.max_chars
    if tally.parts > limits.max_parts:
        # In characters too: the notice must not offer more room than the pieces
        # allowed would have had.
        limit = min(limit, tally.kept)
    return TooLong(first, tally.chars, limit)


def alone(message: Message, prompt: str, limits: PasteLimits) -> Merged | TooLong:
    """``prompt`` as a prompt of its own, under the same caps as a paste."""
    tally = Tally()
    tally.add(len(prompt), limits)
    return outcome(message, [prompt], tally, limits)


def near_limit(message: Message) -> bool:
    text = message.text if message.text is not None else message.caption or ""
    return len(text.encode("utf-16-le")) // 2 >= NEAR_LIMIT


def sender_of(message: Message) -> int:
    """Who sent ``message``: the user, or the chat it was sent on behalf of."""
    if message.sender_chat is not None:
        return message.sender_chat.id
    return message.from_user.id if message.from_user is not None else 0


class PasteMerger(Protocol):
    """Where a message goes before it becomes a prompt.

    A Redis-backed implementation (several replicas) keeps the same contract: the
    process that saw the first piece answers; the others hand their pieces over.
    """

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | TooLong | None:
        """The prompt to answer now (``prompt`` alone, or a whole paste once it is
        complete), TooLong when that is over a cap, or None when ``message`` was
        handed to a paste that is waiting."""
        ...

    async def extend(self, key: PasteKey, message: Message, prompt: str) -> bool:
        """Add ``message`` to ``key``'s paste if one is waiting (True); never
        starts one. For messages that are not prompts on their own (in a group, the
        rest of a paste does not mention the bot)."""
        ...

    def arriving(self, key: PasteKey, message: Message) -> AbstractAsyncContextManager[None]:
        """Held around the whole handling of ``message``, entered in arrival order
        (an outer middleware). aiogram runs plain filters in threads, so a short
        piece may reach its handler before the long piece it follows: pieces wait
        until every near-limit message that arrived before them has started its
        paste, or turned out not to be a prompt."""
        ...


@dataclass
class _Paste:
    deadline: float
    pieces: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, prompt: str, limits: PasteLimits) -> None:
        if self.tally.add(len(prompt), limits):
            self.pieces.append(prompt)


class ArrivalOrder:
    """Near-limit messages of this process on their way to a handler, so that a
    piece never overtakes the long piece it follows (see ``arriving``)."""

    def __init__(self) -> None:
        # Near-limit messages being handled, by message id: set once decided.
        self._arriving: dict[PasteKey, dict[int, asyncio.Event]] = {}

    @contextlib.asynccontextmanager
    async def arriving(self, key: PasteKey, message: Message) -> AsyncIterator[None]:
        if not near_limit(message):
            yield
            return
        decided = asyncio.Event()
        self._arriving.setdefault(key, {})[message.message_id] = decided
        try:
            yield
        finally:
            decided.set()
            arriving = self._arriving.get(key, {})
            arriving.pop(message.message_id, None)
            if not arriving:
                self._arriving.pop(key, None)

    async def after_earlier_pieces(self, key: PasteKey, message: Message) -> None:
        for message_id, decided in list(self._arriving.get(key, {}).items()):
            if message_id < message.message_id:
                await decided.wait()

    def started(self, key: PasteKey, message: Message) -> None:
        """``message`` started a paste: later pieces may join it now."""
        if (decided := self._arriving.get(key, {}).get(message.message_id)) is not None:
            decided.set()


class MemoryPasteMerger:
    """Pastes waiting in this process (one replica)."""

    def __init__(self, window: float = 1.5, limits: PasteLimits | None = None) -> None:
        self._window = window
        self._limits = limits or PasteLimits()
        # The paste taking pieces, per sender; a paste's own object stays with the
        # task that waits for it, whatever starts here after it.
        self._pastes: dict[PasteKey, _Paste] = {}
        self._order = ArrivalOrder()

    def arriving(self, key: PasteKey, message: Message) -> AbstractAsyncContextManager[None]:
        return self._order.arriving(key, message)

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | TooLong | None:
        if await self.extend(key, message, prompt):
            return None
        if not near_limit(message):
            return alone(message, prompt, self._limits)
        loop = asyncio.get_running_loop()
        paste = _Paste(loop.time() + self._window)
        paste.add(prompt, self._limits)
        self._pastes[key] = paste
        self._order.started(key, message)
        try:
            # The deadline moves while near-limit pieces keep coming.
            while not paste.complete.is_set() and (left := paste.deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(paste.complete.wait(), left)
        finally:
            paste.complete.set()  # late pieces start prompts of their own
            if self._pastes.get(key) is paste:
                del self._pastes[key]
        return outcome(message, paste.pieces, paste.tally, self._limits)

    async def extend(self, key: PasteKey, message: Message, prompt: str) -> bool:
        await self._order.after_earlier_pieces(key, message)
        paste = self._pastes.get(key)
        loop = asyncio.get_running_loop()
        if paste is None or paste.complete.is_set() or loop.time() > paste.deadline:
            return False
        paste.add(prompt, self._limits)
        if near_limit(message):
            paste.deadline = loop.time() + self._window
        else:
            paste.complete.set()
        return True
