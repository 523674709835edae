"""Each asker's last prompt: one contract over both stores, then what each does alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from bot.storage.keys import ConversationKey, Keys
from bot.storage.last_prompts import LastPrompts, MemoryLastPrompts, RedisLastPrompts

TTL = 3600
PREFIX = "t"
CHAT = ConversationKey(42)
TOPIC = ConversationKey(-100123, 7)
ANN, BOB = 1, 2

StoreFactory = Callable[[], LastPrompts]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, redis: aioredis.Redis) -> StoreFactory:
    def make() -> LastPrompts:
        if request.param == "memory":
            return MemoryLastPrompts(ttl=TTL)
        return RedisLastPrompts(redis, Keys(PREFIX), ttl=TTL)

    return make


# --- contract: both stores ---------------------------------------------------------------


async def test_nothing_is_noted_at_first(make_store: StoreFactory) -> None:
    assert await make_store().last(CHAT, ANN) is None


async def test_the_newest_prompt_is_the_last(make_store: StoreFactory) -> None:
    store = make_store()
    await store.note(CHAT, ANN, 10)
    await store.note(CHAT, ANN, 12)
    assert await store.last(CHAT, ANN) == 12


async def test_an_older_prompt_noted_late_does_not_take_its_place(
    make_store: StoreFactory,
) -> None:
    """Two replicas note one asker's prompts, each after its own took its place: the
    older one's note may come second."""
    store = make_store()
    await store.note(CHAT, ANN, 12)
    await store.note(CHAT, ANN, 10)
    assert await store.last(CHAT, ANN) == 12
    await store.note(CHAT, ANN, 12)  # an edited prompt, answered anew
    assert await store.last(CHAT, ANN) == 12


async def test_askers_and_conversations_are_apart(make_store: StoreFactory) -> None:
    store = make_store()
    await store.note(TOPIC, ANN, 5)
    await store.note(TOPIC, BOB, 6)
    await store.note(ConversationKey(TOPIC.chat_id), ANN, 7)
    assert await store.last(TOPIC, ANN) == 5
    assert await store.last(TOPIC, BOB) == 6
    assert await store.last(ConversationKey(TOPIC.chat_id), ANN) == 7
    assert await store.last(ConversationKey(TOPIC.chat_id, 8), ANN) is None
    assert await store.last(CHAT, ANN) is None


# --- each store alone ----------------------------------------------------------------------


async def test_redis_keeps_it_as_long_as_a_history(redis: aioredis.Redis) -> None:
    keys = Keys(PREFIX)
    store = RedisLastPrompts(redis, keys, ttl=TTL)
    await store.note(TOPIC, ANN, 5)
    key = keys.last_prompt(TOPIC, ANN)
    assert key == f"{PREFIX}:last_prompt:-100123:7:{ANN}"
    assert await redis.get(key) == b"5"
    await redis.expire(key, 10)
    await store.note(TOPIC, ANN, 6)
    assert TTL - 5 < await redis.ttl(key) <= TTL  # refreshed by each prompt
    await redis.expire(key, 10)
    await store.note(TOPIC, ANN, 4)  # not a prompt of now: changes nothing
    assert await redis.ttl(key) <= 10
    assert await RedisLastPrompts(redis, keys, ttl=TTL).last(TOPIC, ANN) == 6  # any replica


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_forgets_after_the_ttl() -> None:
    clock = Clock()
    store = MemoryLastPrompts(ttl=TTL, clock=clock)
    await store.note(CHAT, ANN, 5)
    clock.now += TTL - 1
    await store.note(CHAT, BOB, 6)
    assert await store.last(CHAT, ANN) == 5
    clock.now += 1
    assert await store.last(CHAT, ANN) is None
    assert await store.last(CHAT, BOB) == 6
