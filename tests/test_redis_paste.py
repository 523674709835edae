"""Pieces of one split paste reaching different replicas are answered as one prompt.

Each "replica" is a :class:`RedisPasteMerger` with its own pub/sub connection on the
test's private redis-server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiogram.types import Message

from bot.conversation.paste_merger import NEAR_LIMIT, Merged, PasteKey
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_paste import RedisPasteMerger
from bot.storage.keys import ConversationKey, Keys

ANN = PasteKey(ConversationKey(1), 1)
LONG = "x" * NEAR_LIMIT
_ids = itertools.count(1)


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


class Replicas:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.subscribers: list[Subscriber] = []

    async def merger(self, window: float) -> RedisPasteMerger:
        subscriber = Subscriber(self.redis)
        merger = RedisPasteMerger(self.redis, Keys("test"), subscriber, window)
        await subscriber.start()
        self.subscribers.append(subscriber)
        return merger


@pytest.fixture
async def replicas(redis: aioredis.Redis) -> AsyncIterator[Replicas]:
    made = Replicas(redis)
    yield made
    for subscriber in made.subscribers:
        await subscriber.aclose()


async def test_pieces_at_three_replicas_make_one_prompt(
    replicas: Replicas, redis: aioredis.Redis
) -> None:
    a, b, c = [await replicas.merger(window=30) for _ in range(3)]
    first = message(LONG)
    leader = asyncio.create_task(a.merge(ANN, first, "a"))
    await asyncio.sleep(0.1)
    assert await b.merge(ANN, message(LONG), "b") is None  # near the limit: more to come
    assert not leader.done()
    assert await c.extend(ANN, message("c"), "c")  # short: the last piece
    # The announcement ends the wait long before the 30 s window.
    merged = await asyncio.wait_for(leader, 5)
    assert isinstance(merged, Merged)
    assert (merged.first, merged.prompt) == (first, "a\nb\nc")
    assert not await b.extend(ANN, message("d"), "d")  # the paste is over
    assert await redis.keys("test:paste:*") == []


async def test_pieces_are_joined_in_message_id_order(replicas: Replicas) -> None:
    a, b, c = [await replicas.merger(window=0.5) for _ in range(3)]
    first, second, third = message(LONG), message(LONG), message(LONG)
    leader = asyncio.create_task(a.merge(ANN, first, "a"))
    await asyncio.sleep(0.1)
    assert await c.merge(ANN, third, "c") is None  # the third reached its replica first
    assert await b.merge(ANN, second, "b") is None
    merged = await asyncio.wait_for(leader, 5)
    assert isinstance(merged, Merged)
    assert merged.prompt == "a\nb\nc"


async def test_a_long_message_alone_waits_out_the_window(replicas: Replicas) -> None:
    a, b = [await replicas.merger(window=0.2) for _ in range(2)]
    merged = await asyncio.wait_for(a.merge(ANN, message(LONG), "a"), 5)
    assert isinstance(merged, Merged)
    assert merged.prompt == "a"
    assert not await b.extend(ANN, message("b"), "b")
    short = await b.merge(ANN, message("hi"), "hi")
    assert isinstance(short, Merged)
    assert short.prompt == "hi"


async def test_a_complete_paste_not_yet_taken_keeps_its_pieces(
    replicas: Replicas, redis: aioredis.Redis
) -> None:
    # The replica that waits has not heard that its paste is complete (pub/sub is at
    # most once: it looks again at its deadline) when the sender's next paste opens.
    deaf = Subscriber(redis)  # never started
    owner = RedisPasteMerger(redis, Keys("test"), deaf, window=0.5)
    other = await replicas.merger(window=0.5)
    one, two = message(LONG), message(LONG)
    first = asyncio.create_task(owner.merge(ANN, one, "a1"))
    await asyncio.sleep(0.1)
    assert await other.extend(ANN, message("a2"), "a2")  # completes the first paste
    second = asyncio.create_task(other.merge(ANN, two, "b1"))
    one_merged, two_merged = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert isinstance(one_merged, Merged)
    assert isinstance(two_merged, Merged)
    assert (one_merged.first, one_merged.prompt) == (one, "a1\na2")
    assert (two_merged.first, two_merged.prompt) == (two, "b1")
    assert (one_merged.parts, two_merged.parts) == (2, 1)
    assert await redis.keys("test:paste:*") == []
