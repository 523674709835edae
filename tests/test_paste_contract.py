"""One contract, two paste mergers: in process (memory) and across replicas (Redis).

Pastes are capped (``PASTE_MAX_PARTS`` pieces, ``PROMPT_MAX_CHARS`` characters in
all) and each paste keeps its own pieces, whatever the same sender starts next.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from aiogram.types import Message

from bot.conversation.paste_merger import (
    NEAR_LIMIT,
    MemoryPasteMerger,
    Merged,
    PasteKey,
    PasteLimits,
    PasteMerger,
    TooLong,
)
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_paste import RedisPasteMerger
from bot.storage.keys import ConversationKey, Keys

ANN = PasteKey(ConversationKey(1), 1)
LONG = "x" * NEAR_LIMIT
_ids = itertools.count(1)

MergerFactory = Callable[[float, PasteLimits], Awaitable[PasteMerger]]


def message(text: str) -> Message:
    return Message.model_validate(
        {
            "message_id": next(_ids),
            "date": 0,
            "chat": {"id": 1, "type": "private"},
            "from": {"id": 1, "is_bot": False, "first_name": "Ann"},
            "text": text,
        }
    )


@pytest.fixture(params=["memory", "redis"])
async def make_merger(
    request: pytest.FixtureRequest, redis: aioredis.Redis
) -> AsyncIterator[MergerFactory]:
    subscribers: list[Subscriber] = []

    async def factory(window: float, limits: PasteLimits) -> PasteMerger:
        if request.param == "memory":
            return MemoryPasteMerger(window, limits)
        subscriber = Subscriber(redis)
        merger = RedisPasteMerger(redis, Keys("test"), subscriber, window, limits)
        await subscriber.start()
        subscribers.append(subscriber)
        return merger

    yield factory
    for subscriber in subscribers:
        await subscriber.aclose()


async def paste(merger: PasteMerger, texts: list[str]) -> Merged | TooLong | None:
    """Send ``texts`` as one sender's messages, the first near the limit; what its
    first piece's handler gets (the later ones must all have joined)."""
    first = message(texts[0])
    leader = asyncio.create_task(merger.merge(ANN, first, texts[0]))
    await asyncio.sleep(0.05)  # the first piece opened the paste
    for text in texts[1:]:
        assert await merger.merge(ANN, message(text), text) is None
    return await asyncio.wait_for(leader, 10)


async def test_a_paste_counts_its_pieces(make_merger: MergerFactory) -> None:
    merger = await make_merger(30, PasteLimits(max_parts=3, max_chars=12000))
    merged = await paste(merger, [LONG, LONG, "end"])
    assert isinstance(merged, Merged)
    assert (merged.prompt, merged.parts) == (f"{LONG}\n{LONG}\nend", 3)


async def test_more_pieces_than_max_parts_are_refused_whole(make_merger: MergerFactory) -> None:
    merger = await make_merger(30, PasteLimits(max_parts=2, max_chars=12000))
    merged = await paste(merger, [LONG, LONG, "end"])  # well within max_chars
    assert isinstance(merged, TooLong)
    # The notice offers what two pieces would have carried, not max_chars.
    assert (merged.chars, merged.limit) == (2 * NEAR_LIMIT + 3 + 2, 2 * NEAR_LIMIT + 1)
    # Every piece joined the refused paste: none is a prompt of its own.
    short = await merger.merge(ANN, message("next"), "next")
    assert isinstance(short, Merged)
    assert short.prompt == "next"


async def test_more_characters_than_max_chars_are_refused_whole(
    make_merger: MergerFactory,
) -> None:
    merger = await make_merger(30, PasteLimits(max_parts=8, max_chars=5000))
    merged = await paste(merger, [LONG, LONG, "end"])
    assert isinstance(merged, TooLong)
    assert (merged.chars, merged.limit) == (2 * NEAR_LIMIT + 3 + 2, 5000)


async def test_exactly_at_the_caps_is_a_prompt(make_merger: MergerFactory) -> None:
    chars = 2 * NEAR_LIMIT + 1 + 1 + 1  # LONG, LONG and "e", two joiners
    merger = await make_merger(30, PasteLimits(max_parts=3, max_chars=chars))
    merged = await paste(merger, [LONG, LONG, "e"])
    assert isinstance(merged, Merged)
    assert len(merged.prompt) == chars


async def test_a_message_alone_over_max_chars_is_refused(make_merger: MergerFactory) -> None:
    merger = await make_merger(30, PasteLimits(max_parts=8, max_chars=100))
    first = message("y" * 150)
    merged = await asyncio.wait_for(merger.merge(ANN, first, "y" * 150), 5)
    assert merged == TooLong(first, 150, 100)


async def test_back_to_back_pastes_keep_their_own_pieces(make_merger: MergerFactory) -> None:
    merger = await make_merger(0.5, PasteLimits(max_parts=8, max_chars=20000))
    one = message(LONG)
    first = asyncio.create_task(merger.merge(ANN, one, "a1"))
    await asyncio.sleep(0.05)
    assert await merger.merge(ANN, message("a2"), "a2") is None  # completes the first
    two = message(LONG)  # at once: before the first one's owner took its pieces
    second = await asyncio.wait_for(merger.merge(ANN, two, "b1"), 10)
    assert second == Merged(two, "b1", 1)
    assert await asyncio.wait_for(first, 10) == Merged(one, "a1\na2", 2)
