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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
    "PasteMerger",
    "near_limit",
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
class Merged:
    first: Message  # the answer replies to the first piece
    prompt: str


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

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | None:
        """The prompt to answer now (``prompt`` alone, or a whole paste once it is
        complete), or None when ``message`` was handed to a paste that is waiting."""
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
    pieces: list[str]
    deadline: float
    complete: asyncio.Event = field(default_factory=asyncio.Event)


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

    def __init__(self, window: float = 1.5) -> None:
        self._window = window
        self._pastes: dict[PasteKey, _Paste] = {}
        self._order = ArrivalOrder()

    def arriving(self, key: PasteKey, message: Message) -> AbstractAsyncContextManager[None]:
        return self._order.arriving(key, message)

    async def merge(self, key: PasteKey, message: Message, prompt: str) -> Merged | None:
        if await self.extend(key, message, prompt):
            return None
        if not near_limit(message):
            return Merged(message, prompt)
        loop = asyncio.get_running_loop()
        paste = _Paste([prompt], loop.time() + self._window)
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
        return Merged(message, JOINER.join(paste.pieces))

    async def extend(self, key: PasteKey, message: Message, prompt: str) -> bool:
        await self._order.after_earlier_pieces(key, message)
        paste = self._pastes.get(key)
        loop = asyncio.get_running_loop()
        if paste is None or paste.complete.is_set() or loop.time() > paste.deadline:
            return False
        paste.pieces.append(prompt)
        if near_limit(message):
            paste.deadline = loop.time() + self._window
        else:
            paste.complete.set()
        return True
