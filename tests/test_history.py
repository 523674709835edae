"""History stores: one contract suite over both stores, then Redis-only and memory-only tests."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from bot.storage.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore, Turn
from bot.storage.keys import ConversationKey, Keys
from gptalk import Message

TTL = 3600
PREFIX = "t"

StoreFactory = Callable[..., HistoryStore]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def u(content: str) -> Message:
    return Message(role="user", content=content)


def a(content: str) -> Message:
    return Message(role="assistant", content=content)


CHAT = ConversationKey(42)


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, redis: aioredis.Redis) -> StoreFactory:
    def make(max_messages: int = 20, ttl: int = TTL, prefix: str = PREFIX) -> HistoryStore:
        if request.param == "memory":
            return MemoryHistoryStore(max_messages=max_messages, ttl=ttl)
        return RedisHistoryStore(redis, Keys(prefix), max_messages=max_messages, ttl=ttl)

    return make


# --- contract: both stores ---------------------------------------------------------------


async def test_unknown_conversation_is_empty(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.load(CHAT) == []
    assert await store.load(ConversationKey(-100123, 7)) == []


async def test_round_trip_keeps_content_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    messages = [
        u("Привет! 👋 Как дела?"),
        a('Line one\nline two\n\n```py\nprint("日本語")\n```\n'),
        u('quotes " and \\ backslash, tab\t, emoji 👨‍👩‍👧 and {"json": 1}'),
        a(""),
    ]
    await store.append(CHAT, messages[0])
    await store.append(CHAT, *messages[1:])
    loaded = await store.load(CHAT)
    assert loaded == messages
    assert all(set(m) == {"role", "content"} for m in loaded)


async def test_load_returns_a_copy(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append(CHAT, u("one"))
    loaded = await store.load(CHAT)
    loaded.append(a("sneaky"))
    loaded[0]["content"] = "changed"
    assert await store.load(CHAT) == [u("one")]


async def test_trimming_keeps_the_newest(make_store: StoreFactory) -> None:
    store = make_store(max_messages=4)
    for i in range(1, 4):
        await store.append(CHAT, u(f"u{i}"), a(f"a{i}"))
    assert await store.load(CHAT) == [u("u2"), a("a2"), u("u3"), a("a3")]
    await store.append(CHAT, u("x1"), u("x2"), u("x3"), u("x4"), u("x5"))
    assert await store.load(CHAT) == [u("x2"), u("x3"), u("x4"), u("x5")]


@pytest.mark.parametrize(
    ("max_messages", "appended", "expected"),
    [
        # newest 3 of u1 a1 u2 a2 are a1 u2 a2: the leading answer goes too
        (3, [u("u1"), a("a1"), u("u2"), a("a2")], [u("u2"), a("a2")]),
        # newest 4 of u1 a1 u2 a2 u3 are a1 u2 a2 u3
        (4, [u("u1"), a("a1"), u("u2"), a("a2"), u("u3")], [u("u2"), a("a2"), u("u3")]),
        # several answers in a row at the cut all go
        (3, [u("u1"), a("a1"), a("a2"), a("a3"), u("u2")], [u("u2")]),
        # nothing but answers: nothing is kept
        (2, [a("a1"), a("a2"), a("a3")], []),
        # a cut that lands on a user message keeps max_messages
        (3, [u("u1"), a("a1"), u("u2"), u("u3"), a("a2")], [u("u2"), u("u3"), a("a2")]),
    ],
)
@pytest.mark.parametrize("one_by_one", [True, False], ids=["one-by-one", "at-once"])
async def test_trimmed_history_never_starts_with_an_answer(
    make_store: StoreFactory,
    max_messages: int,
    appended: list[Message],
    expected: list[Message],
    one_by_one: bool,
) -> None:
    store = make_store(max_messages=max_messages)
    if one_by_one:
        for message in appended:
            await store.append(CHAT, message)
            history = await store.load(CHAT)
            assert len(history) <= max_messages
            assert not history or history[0]["role"] != "assistant"
    else:
        await store.append(CHAT, *appended)
    assert await store.load(CHAT) == expected


async def test_sequential_trim_walkthrough(make_store: StoreFactory) -> None:
    store = make_store(max_messages=3)
    steps = [
        (u("u1"), [u("u1")]),
        (a("a1"), [u("u1"), a("a1")]),
        (u("u2"), [u("u1"), a("a1"), u("u2")]),
        (a("a2"), [u("u2"), a("a2")]),
        (u("u3"), [u("u2"), a("a2"), u("u3")]),
        (a("a3"), [u("u3"), a("a3")]),
    ]
    for message, expected in steps:
        await store.append(CHAT, message)
        assert await store.load(CHAT) == expected


async def test_pop_answer_removes_a_trailing_answer(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append(CHAT, u("q1"), a("r1"), u("q2"), a("r2 ✨"))
    assert await store.pop_answer(CHAT) == a("r2 ✨")
    assert await store.load(CHAT) == [u("q1"), a("r1"), u("q2")]
    # the last message is now the user's: nothing more is removed
    assert await store.pop_answer(CHAT) is None
    assert await store.load(CHAT) == [u("q1"), a("r1"), u("q2")]


async def test_pop_answer_on_empty_or_user_last(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.pop_answer(CHAT) is None
    assert await store.load(CHAT) == []
    await store.append(CHAT, u("only"))
    assert await store.pop_answer(CHAT) is None
    assert await store.load(CHAT) == [u("only")]


async def test_append_after_pop_answer(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append(CHAT, u("q"), a("first try"))
    await store.pop_answer(CHAT)
    await store.append(CHAT, a("second try"))
    assert await store.load(CHAT) == [u("q"), a("second try")]


async def test_answer_after_puts_a_missing_answer_right_after_its_question(
    make_store: StoreFactory,
) -> None:
    store = make_store(max_messages=6)
    is_q1 = "q1".__eq__
    await store.append(CHAT, u("q0"), a("r0"), u("q1"), u("q2"), a("r2"))
    assert await store.answer_after(CHAT, None, is_q1, a("r1 (interrupted)"))
    assert await store.load(CHAT) == [
        u("q0"), a("r0"), u("q1"), a("r1 (interrupted)"), u("q2"), a("r2"),
    ]  # fmt: skip
    # Answered now, and a question that is gone (a reset): nothing is put anywhere.
    assert not await store.answer_after(CHAT, None, is_q1, a("again"))
    assert not await store.answer_after(CHAT, None, "q9".__eq__, a("nowhere"))
    await store.append(CHAT, u("q3"))
    assert await store.answer_after(CHAT, None, "q3".__eq__, a("r3"))  # the last: appended
    assert (await store.load(CHAT))[-2:] == [u("q3"), a("r3")]


async def test_answer_after_keeps_to_the_askers_own_turns(make_store: StoreFactory) -> None:
    store = make_store()
    ann: Turn = {"role": "user", "content": "q", "asker": 1}
    bob: Turn = {"role": "user", "content": "q", "asker": 2}
    bobs_answer: Turn = {"role": "assistant", "content": "for bob", "asker": 2}
    await store.append(CHAT, ann, bob, bobs_answer)
    anns_answer: Turn = {"role": "assistant", "content": "for ann", "asker": 1}
    assert await store.answer_after(CHAT, 1, "q".__eq__, anns_answer)  # Bob's answer is not hers
    assert await store.load(CHAT) == [ann, anns_answer, bob, bobs_answer]


async def test_clear(make_store: StoreFactory) -> None:
    store = make_store()
    other = ConversationKey(43)
    await store.append(CHAT, u("q"), a("r"))
    await store.append(other, u("keep me"))
    await store.clear(CHAT)
    assert await store.load(CHAT) == []
    assert await store.load(other) == [u("keep me")]
    await store.clear(CHAT)  # clearing an empty conversation is fine
    await store.clear(ConversationKey(999, 1))
    await store.append(CHAT, u("fresh"))
    assert await store.load(CHAT) == [u("fresh")]


async def test_conversations_are_independent(make_store: StoreFactory) -> None:
    store = make_store(max_messages=2)
    keys = [
        ConversationKey(42),
        ConversationKey(42, 7),
        ConversationKey(42, 8),
        ConversationKey(-42),
        ConversationKey(7, 42),
        ConversationKey(427),
    ]
    for index, key in enumerate(keys):
        await store.append(key, u(f"q{index}"), a(f"r{index}"))
    await store.append(ConversationKey(42), u("more"))  # trims only the chat's own history
    await store.pop_answer(ConversationKey(42, 7))
    assert await store.load(ConversationKey(42)) == [u("more")]
    assert await store.load(ConversationKey(42, 7)) == [u("q1")]
    for index, key in enumerate(keys[2:], start=2):
        assert await store.load(key) == [u(f"q{index}"), a(f"r{index}")]
    await store.clear(ConversationKey(42, 8))
    assert await store.load(ConversationKey(42, 8)) == []
    assert await store.load(ConversationKey(42)) == [u("more")]


GROUP, SUPERGROUP = ConversationKey(-4001), ConversationKey(-1004001)


async def test_move_gives_the_history_to_the_new_chat(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append(GROUP, u("q1"), a("r1"), u("q2"))
    await store.append(ConversationKey(-4001, 3), u("other"))  # not moved: another key
    await store.move(GROUP, SUPERGROUP)
    assert await store.load(SUPERGROUP) == [u("q1"), a("r1"), u("q2")]
    assert await store.load(GROUP) == []
    assert await store.load(ConversationKey(-4001, 3)) == [u("other")]
    await store.append(SUPERGROUP, a("r2"))  # the conversation goes on in the new chat
    assert await store.load(SUPERGROUP) == [u("q1"), a("r1"), u("q2"), a("r2")]


async def test_move_twice_or_from_nothing_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append(GROUP, u("q1"), a("r1"))
    await store.move(GROUP, SUPERGROUP)
    await store.move(GROUP, SUPERGROUP)  # the service message and the error both say so
    await store.move(ConversationKey(-4002), SUPERGROUP)
    await store.move(SUPERGROUP, SUPERGROUP)
    assert await store.load(SUPERGROUP) == [u("q1"), a("r1")]


async def test_move_onto_a_history_appends_and_trims(make_store: StoreFactory) -> None:
    store = make_store(max_messages=3)
    await store.append(SUPERGROUP, u("q1"), a("r1"), u("q2"))
    await store.append(GROUP, u("q3"))  # a prompt that was still queued in the old chat
    await store.move(GROUP, SUPERGROUP)
    assert await store.load(SUPERGROUP) == [u("q2"), u("q3")]  # trimmed, never an answer first
    assert await store.load(GROUP) == []


# --- Redis only --------------------------------------------------------------------------


def redis_store(
    redis: aioredis.Redis, prefix: str = "P", max_messages: int = 20, ttl: int = TTL
) -> RedisHistoryStore:
    return RedisHistoryStore(redis, Keys(prefix), max_messages=max_messages, ttl=ttl)


async def test_redis_key_layout(redis: aioredis.Redis) -> None:
    store = redis_store(redis)
    await store.append(ConversationKey(42), u("hi 👋"), a("hello\nthere"))
    await store.append(ConversationKey(-100123, 5), u("topic"))
    keys = sorted(await redis.keys("*"))
    assert keys == [b"P:history:-100123:5", b"P:history:42"]
    assert await redis.type("P:history:42") == b"list"
    raw = await redis.lrange("P:history:42", 0, -1)
    assert [json.loads(item) for item in raw] == [
        {"role": "user", "content": "hi 👋"},
        {"role": "assistant", "content": "hello\nthere"},
    ]
    assert all(isinstance(json.loads(item), dict) for item in raw)
    assert [json.loads(item) for item in await redis.lrange("P:history:-100123:5", 0, -1)] == [
        {"role": "user", "content": "topic"}
    ]


async def test_redis_reads_what_others_wrote(redis: aioredis.Redis) -> None:
    """The list is the interface: oldest first, JSON objects, as another process writes it."""
    await redis.rpush(
        "P:history:9",
        json.dumps({"role": "user", "content": "q"}),
        json.dumps({"role": "assistant", "content": "r"}),
    )
    store = redis_store(redis)
    assert await store.load(ConversationKey(9)) == [u("q"), a("r")]
    assert await store.pop_answer(ConversationKey(9)) == a("r")
    assert await redis.llen("P:history:9") == 1


async def assert_ttl(redis: aioredis.Redis, key: str, ttl: int = TTL) -> None:
    remaining = await redis.ttl(key)
    assert 0 < remaining <= ttl


async def test_redis_ttl_set_on_append(redis: aioredis.Redis) -> None:
    store = redis_store(redis)
    await store.append(ConversationKey(1), u("q"))
    await assert_ttl(redis, "P:history:1")
    await store.append(ConversationKey(1, 2), u("q"))
    await assert_ttl(redis, "P:history:1:2")


async def test_redis_ttl_refreshed_on_every_write(redis: aioredis.Redis) -> None:
    store = redis_store(redis)
    key = "P:history:1"
    await store.append(ConversationKey(1), u("q"), a("r"), u("q2"))

    await redis.expire(key, 5)
    await store.append(ConversationKey(1), a("r2"))
    assert await redis.ttl(key) > 5
    await assert_ttl(redis, key)

    await redis.expire(key, 5)
    assert await store.pop_answer(ConversationKey(1)) == a("r2")
    assert await redis.ttl(key) > 5
    await assert_ttl(redis, key)


async def test_redis_ttl_when_trim_runs(redis: aioredis.Redis) -> None:
    store = redis_store(redis, max_messages=2)
    await store.append(ConversationKey(1), u("q1"), a("r1"))
    await redis.expire("P:history:1", 5)
    await store.append(ConversationKey(1), u("q2"))
    assert await store.load(ConversationKey(1)) == [u("q2")]
    assert await redis.ttl("P:history:1") > 5
    await assert_ttl(redis, "P:history:1")


async def test_redis_move_renames_and_refreshes_the_ttl(redis: aioredis.Redis) -> None:
    store = redis_store(redis)
    await store.append(ConversationKey(-4001), u("q"), a("r"))
    await redis.expire("P:history:-4001", 5)
    await store.move(ConversationKey(-4001), ConversationKey(-1004001))
    assert sorted(await redis.keys("*")) == [b"P:history:-1004001"]
    await assert_ttl(redis, "P:history:-1004001")
    assert await redis.ttl("P:history:-1004001") > 5


async def test_redis_no_key_left_without_ttl(redis: aioredis.Redis) -> None:
    store = redis_store(redis, max_messages=2)
    await store.append(ConversationKey(1), a("orphan answer"))  # trimmed away entirely
    assert await redis.exists("P:history:1") == 0
    await store.append(ConversationKey(2), u("q"), a("r"))
    await store.pop_answer(ConversationKey(2))
    await store.clear(ConversationKey(2))
    assert await redis.keys("*") == []


async def test_redis_an_answer_to_no_question_is_not_popped(redis: aioredis.Redis) -> None:
    store = redis_store(redis)
    await redis.rpush("P:history:3", json.dumps({"role": "assistant", "content": "r"}))
    assert await store.pop_answer(ConversationKey(3)) is None
    assert await redis.llen("P:history:3") == 1


async def test_redis_prefixes_are_separate(redis: aioredis.Redis) -> None:
    one, two = redis_store(redis, prefix="one"), redis_store(redis, prefix="two")
    await redis.set("other:history:1", "unrelated")
    await one.append(ConversationKey(1), u("for one"), a("r1"))
    await two.append(ConversationKey(1), u("for two"))
    assert await one.load(ConversationKey(1)) == [u("for one"), a("r1")]
    assert await two.load(ConversationKey(1)) == [u("for two")]
    assert await two.pop_answer(ConversationKey(1)) is None
    assert await one.pop_answer(ConversationKey(1)) == a("r1")
    await one.clear(ConversationKey(1))
    assert await one.load(ConversationKey(1)) == []
    assert await two.load(ConversationKey(1)) == [u("for two")]
    assert sorted(await redis.keys("*")) == [b"other:history:1", b"two:history:1"]
    assert await redis.get("other:history:1") == b"unrelated"


async def test_redis_store_with_decoding_client(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.flushall()
        store = redis_store(client)
        await store.append(ConversationKey(5), u("ü 👍"), a("ok"))
        assert await store.load(ConversationKey(5)) == [u("ü 👍"), a("ok")]
        assert await store.pop_answer(ConversationKey(5)) == a("ok")
    finally:
        await client.aclose()


# --- memory only -------------------------------------------------------------------------


async def test_memory_expiry_with_injected_clock() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=100, clock=clock)
    await store.append(CHAT, u("q"))
    clock.now += 99.9
    assert await store.load(CHAT) == [u("q")]
    clock.now += 0.1
    assert await store.load(CHAT) == []
    assert await store.pop_answer(CHAT) is None


async def test_memory_expiry_refreshed_on_every_write() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=100, clock=clock)
    await store.append(CHAT, u("q"))
    clock.now += 60
    await store.append(CHAT, a("r"))  # refresh: lives until 160 after start
    clock.now += 60
    assert await store.load(CHAT) == [u("q"), a("r")]
    await store.pop_answer(CHAT)  # a write too: lives until 220
    clock.now += 90
    assert await store.load(CHAT) == [u("q")]
    clock.now += 10
    assert await store.load(CHAT) == []


async def test_memory_load_does_not_refresh_expiry() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=100, clock=clock)
    await store.append(CHAT, u("q"))
    for _ in range(4):
        clock.now += 30
        await store.load(CHAT)
    assert await store.load(CHAT) == []


async def test_memory_expiry_is_per_conversation() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=100, clock=clock)
    await store.append(ConversationKey(1), u("old"))
    clock.now += 50
    await store.append(ConversationKey(1, 2), u("newer"))
    clock.now += 60
    assert await store.load(ConversationKey(1)) == []
    assert await store.load(ConversationKey(1, 2)) == [u("newer")]


async def test_memory_expired_history_starts_fresh() -> None:
    clock = Clock()
    store = MemoryHistoryStore(max_messages=20, ttl=100, clock=clock)
    await store.append(CHAT, u("q"), a("r"))
    clock.now += 200
    await store.append(CHAT, u("new"))
    assert await store.load(CHAT) == [u("new")]


def turn(role: str, content: str, asker: int) -> Turn:
    return Turn(role=role, content=content, asker=asker)


async def test_pop_answer_finds_the_answer_to_an_askers_last_question(
    make_store: StoreFactory,
) -> None:
    """In a group answers interleave: /retry removes the asker's own answer."""
    store = make_store()
    ann_q, bob_q = turn("user", "Ann: q1", 1), turn("user", "Bob: q2", 2)
    to_bob, to_ann = turn("assistant", "to Bob", 2), turn("assistant", "to Ann", 1)
    await store.append(CHAT, ann_q, bob_q, to_bob, to_ann)
    assert await store.load(CHAT) == [ann_q, bob_q, to_bob, to_ann]  # askers are kept
    assert await store.pop_answer(CHAT, 2) == to_bob
    assert await store.load(CHAT) == [ann_q, bob_q, to_ann]
    assert await store.pop_answer(CHAT, 2) is None  # Bob's question has no answer now
    ann_q3 = turn("user", "Ann: q3", 1)
    await store.append(CHAT, ann_q3)
    assert await store.pop_answer(CHAT, 1) is None  # Ann's last question is not answered yet
    assert await store.load(CHAT) == [ann_q, bob_q, to_ann, ann_q3]


async def test_replace_question_swaps_the_askers_last_question_and_drops_its_answer(
    make_store: StoreFactory,
) -> None:
    """An edited prompt: its new text takes the old one's place, its answer goes."""
    store = make_store()
    ann_q, bob_q = turn("user", "Ann: q1", 1), turn("user", "Bob: q2", 2)
    to_bob, to_ann = turn("assistant", "to Bob", 2), turn("assistant", "to Ann", 1)
    await store.append(CHAT, ann_q, bob_q, to_ann, to_bob)
    edited = turn("user", "Ann: q1 edited", 1)
    assert await store.replace_question(CHAT, edited) == [edited]  # the new prompt's context
    assert await store.load(CHAT) == [edited, bob_q, to_bob]
    bob_edited = turn("user", "Bob: q2 edited", 2)
    assert await store.replace_question(CHAT, bob_edited) == [edited, bob_edited]
    assert await store.load(CHAT) == [edited, bob_edited]
    # no question of this asker: appended
    cid_q = turn("user", "Cid: q3", 3)
    assert await store.replace_question(CHAT, cid_q) == [edited, bob_edited, cid_q]
    assert await store.replace_question(ConversationKey(43), cid_q) == [cid_q]
