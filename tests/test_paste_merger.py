"""The in-memory paste merger on its own: which messages wait, which join, which pass."""

from __future__ import annotations

import asyncio
import itertools

from aiogram.types import Message

from bot.conversation.paste_merger import (
    NEAR_LIMIT,
    MemoryPasteMerger,
    Merged,
    PasteKey,
    near_limit,
    sender_of,
)
from bot.storage.keys import ConversationKey

ANN = PasteKey(ConversationKey(1), 1)
BOB = PasteKey(ConversationKey(1), 2)
_ids = itertools.count(1)


def message(text: str, user_id: int = 1) -> Message:
    return Message.model_validate(
        {
            "message_id": next(_ids),
            "date": 0,
            "chat": {"id": 1, "type": "private"},
            "from": {"id": user_id, "is_bot": False, "first_name": "Ann"},
            "text": text,
        }
    )


LONG = "x" * NEAR_LIMIT


def test_near_limit_counts_utf16_units() -> None:
    assert near_limit(message("x" * NEAR_LIMIT))
    assert not near_limit(message("x" * (NEAR_LIMIT - 1)))
    assert near_limit(message("😀" * (NEAR_LIMIT // 2)))  # 2 units each
    assert sender_of(message("hi", user_id=7)) == 7


async def test_short_message_passes_at_once() -> None:
    merger = MemoryPasteMerger(window=60)
    first = message("hello")
    merged = await asyncio.wait_for(merger.merge(ANN, first, "hello"), 1)
    assert isinstance(merged, Merged)
    assert (merged.first, merged.prompt) == (first, "hello")


async def test_long_message_alone_waits_for_the_window() -> None:
    merger = MemoryPasteMerger(window=0.05)
    merged = await asyncio.wait_for(merger.merge(ANN, message(LONG), "a"), 5)
    assert isinstance(merged, Merged)
    assert merged.prompt == "a"
    # The paste is over: the next message is a prompt of its own.
    assert not await merger.extend(ANN, message("b"), "b")


async def test_pieces_join_the_waiting_paste() -> None:
    merger = MemoryPasteMerger(window=60)
    first = message(LONG)
    leader = asyncio.create_task(merger.merge(ANN, first, "a"))
    await asyncio.sleep(0)
    assert await merger.merge(BOB, message("bob"), "bob") is not None  # someone else's
    assert await merger.merge(ANN, message(LONG), "b") is None  # near the limit: more to come
    assert not leader.done()
    assert await merger.extend(ANN, message("c"), "c")  # short: the last piece
    merged = await asyncio.wait_for(leader, 1)
    assert isinstance(merged, Merged)
    assert (merged.first, merged.prompt) == (first, "a\nb\nc")
    assert not await merger.extend(ANN, message("d"), "d")


async def test_a_near_limit_piece_extends_the_window() -> None:
    merger = MemoryPasteMerger(window=0.3)
    leader = asyncio.create_task(merger.merge(ANN, message(LONG), "a"))
    await asyncio.sleep(0.2)
    assert await merger.merge(ANN, message(LONG), "b") is None
    await asyncio.sleep(0.2)  # past the first deadline, within the extended one
    assert await merger.merge(ANN, message("c"), "c") is None
    merged = await asyncio.wait_for(leader, 5)
    assert isinstance(merged, Merged)
    assert merged.prompt == "a\nb\nc"


async def test_a_piece_overtaking_its_long_predecessor_still_joins_it() -> None:
    # aiogram runs filters in threads: the short rest may reach its handler first.
    merger = MemoryPasteMerger(window=60)
    first, rest = message(LONG), message("rest")
    async with merger.arriving(ANN, first), merger.arriving(ANN, rest):
        follower = asyncio.create_task(merger.merge(ANN, rest, "rest"))
        await asyncio.sleep(0.05)
        assert not follower.done()  # waits for the long one to be decided
        merged = await asyncio.wait_for(merger.merge(ANN, first, "long"), 1)
        assert await follower is None
    assert isinstance(merged, Merged)
    assert (merged.first, merged.prompt) == (first, "long\nrest")


async def test_a_long_message_that_is_no_prompt_releases_what_follows() -> None:
    merger = MemoryPasteMerger(window=60)
    first, rest = message(LONG), message("rest")
    async with merger.arriving(ANN, rest):
        async with merger.arriving(ANN, first):
            follower = asyncio.create_task(merger.merge(ANN, rest, "rest"))
            await asyncio.sleep(0.05)
            assert not follower.done()
        merged = await asyncio.wait_for(follower, 1)  # no paste started: a prompt of its own
    assert isinstance(merged, Merged)
    assert merged.prompt == "rest"
