"""The journal of answers in flight: one contract suite for the memory and Redis journals.

Leases are short (about a second) so that lapses happen within the test; a crash is
a journal whose renewal stops without giving its lease up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from bot.delivery.journal import Entry, Journal, MemoryJournal, MemorySpace, RedisJournal
from bot.delivery.render import render
from bot.storage.keys import ConversationKey, Keys

LEASE = 0.6
JournalFactory = Callable[..., Awaitable[Journal]]


@pytest.fixture(params=["memory", "redis"])
async def make_journal(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[JournalFactory]:
    """Journals sharing one store (one process's memory, or one Redis), opened."""
    space = MemorySpace()
    client: aioredis.Redis | None = None
    if request.param == "redis":
        client = aioredis.Redis.from_url(redis_url)
        await client.flushall()
    journals: list[Journal] = []

    async def factory(owner: str, *, lease: float = LEASE, entry_ttl: int = 3600) -> Journal:
        journal: Journal
        if client is None:
            journal = MemoryJournal(owner=owner, lease=lease, entry_ttl=entry_ttl, space=space)
        else:
            keys = Keys("test")
            journal = RedisJournal(client, keys, owner=owner, lease=lease, entry_ttl=entry_ttl)
        await journal.open()
        journals.append(journal)
        return journal

    yield factory
    for journal in journals:
        await journal.aclose()
    if client is not None:
        await client.aclose()


def crash(journal: Journal) -> None:
    """The process dies: its lease is no longer renewed, nor given up."""
    renewal = journal._renewal  # type: ignore[attr-defined]
    renewal.cancel()


def entry(chat_id: int = 5, thread_id: int | None = None, question: str = "why?") -> Entry:
    return Entry.new(
        ConversationKey(chat_id, thread_id), reply_to=10, question=question, language="ru"
    )


async def lapse() -> None:
    await asyncio.sleep(LEASE * 1.5)


async def test_a_live_owners_entries_are_never_orphans(make_journal: JournalFactory) -> None:
    alive, other = await make_journal("a:1"), await make_journal("b:2")
    answer = entry()
    await alive.begin(answer)
    await asyncio.sleep(LEASE * 3)  # several lease periods: the renewal keeps it alive
    assert await other.orphans() == []
    assert await alive.orphans() == []
    assert await other.claim(answer.id) is None
    assert await alive.claim(answer.id) is None  # not even its own sweep takes it
    crash(alive)
    await lapse()
    [orphan] = await other.orphans()
    assert orphan.id == answer.id
    assert orphan.owner == "a:1"


async def test_an_orphan_keeps_what_was_shown(make_journal: JournalFactory) -> None:
    dead, sweeper = await make_journal("a:1"), await make_journal("b:2")
    answer = entry(thread_id=7)
    await dead.begin(answer)
    shown = render("Some **bold** and a [link](https://example.com/x) ✨")
    await dead.update(Entry.new(answer.conversation, reply_to=1, question="x"))  # not begun
    await dead.update(
        Entry(
            id=answer.id,
            conversation=answer.conversation,
            reply_to=answer.reply_to,
            question=answer.question,
            language=answer.language,
            message_ids=(11, 12),
            markdown="# Title\n\nSome **bold** and a [link](https://example.com/x) ✨",
            last=shown,
        )
    )
    crash(dead)
    await lapse()
    [orphan] = await sweeper.orphans()
    assert orphan.conversation == ConversationKey(5, 7)
    assert orphan.reply_to == 10
    assert orphan.language == "ru"
    assert orphan.message_ids == (11, 12)
    assert orphan.markdown.endswith("✨")
    assert orphan.last == shown
    assert {e.type for e in orphan.last.entities} == {"bold", "text_link"}


async def test_an_ended_answer_is_gone_and_later_updates_do_not_bring_it_back(
    make_journal: JournalFactory,
) -> None:
    journal, sweeper = await make_journal("a:1"), await make_journal("b:2")
    answer = entry()
    await journal.begin(answer)
    await journal.end(answer.id)
    await journal.update(answer)  # a late background write
    crash(journal)
    await lapse()
    assert await sweeper.orphans() == []


async def test_claiming_is_exclusive_and_release_gives_it_back(
    make_journal: JournalFactory,
) -> None:
    dead = await make_journal("a:1")
    one, two = await make_journal("b:2"), await make_journal("c:3")
    answer = entry()
    await dead.begin(answer)
    crash(dead)
    await lapse()
    claims = await asyncio.gather(one.claim(answer.id), two.claim(answer.id))
    assert sorted(c is not None for c in claims) == [False, True]
    winner, loser = (one, two) if claims[0] is not None else (two, one)
    assert await loser.orphans() == []  # the winner is alive: hands off
    await loser.release(answer)  # not the loser's to release
    assert await loser.orphans() == []
    await winner.release(answer)
    [orphan] = await loser.orphans()
    assert orphan.id == answer.id
    assert await loser.claim(answer.id) is not None


async def test_a_restart_under_the_same_replica_id_orphans_its_predecessors_entries(
    make_journal: JournalFactory,
) -> None:
    before = await make_journal("host:1")
    answer = entry()
    await before.begin(answer)
    crash(before)  # its lease is still valid for a while
    after = await make_journal("host:1")  # e.g. a container restarted: same hostname, pid 1
    [orphan] = await after.orphans()
    assert orphan.id == answer.id
    # The dead one's lease, long replaced, is not the successor's to give up.
    await before.aclose()
    mine = entry(chat_id=6)
    await after.begin(mine)
    sweeper = await make_journal("other:2")
    assert [o.id for o in await sweeper.orphans()] == [answer.id]


async def test_forget_erases_one_conversations_entries_whoever_owns_them(
    make_journal: JournalFactory,
) -> None:
    dead, journal = await make_journal("a:1"), await make_journal("b:2")
    gone = [entry(5), entry(5)]
    kept = [entry(55), entry(5, 7), entry(-5)]
    for answer in [*gone, *kept]:
        await dead.begin(answer)
    crash(dead)
    await lapse()
    await journal.forget(ConversationKey(5))
    assert sorted(o.id for o in await journal.orphans()) == sorted(a.id for a in kept)


async def test_a_graceful_stop_orphans_what_it_left_at_once(
    make_journal: JournalFactory,
) -> None:
    stopping, other = await make_journal("a:1", lease=60), await make_journal("b:2")
    answer = entry()
    await stopping.begin(answer)
    await stopping.aclose()
    [orphan] = await other.orphans()
    assert orphan.id == answer.id


async def test_entries_expire(make_journal: JournalFactory) -> None:
    dead, sweeper = await make_journal("a:1", entry_ttl=1), await make_journal("b:2")
    await dead.begin(entry())
    crash(dead)
    await asyncio.sleep(1.3)
    assert await sweeper.orphans() == []


async def test_redis_keys_are_under_the_prefix_and_expire(redis: aioredis.Redis) -> None:
    journal = RedisJournal(redis, Keys("bot1"), owner="h:1", lease=5, entry_ttl=100)
    await journal.open()
    try:
        answer = entry()
        await journal.begin(answer)
        keys = sorted(k.decode() for k in await redis.keys("*"))
        assert keys == ["bot1:journal", f"bot1:journal:{answer.id}", "bot1:owner:h:1"]
        assert 0 < await redis.ttl(f"bot1:journal:{answer.id}") <= 100
        assert 0 < await redis.pttl("bot1:owner:h:1") <= 5000
        await journal.end(answer.id)
    finally:
        await journal.aclose()
    assert await redis.keys("*") == []


async def test_a_memory_journal_has_nothing_to_recover_in_a_new_process() -> None:
    before = MemoryJournal(owner="h:1", lease=LEASE)
    await before.open()
    await before.begin(entry())
    crash(before)
    after = MemoryJournal(owner="h:2", lease=LEASE)  # a new process: a new memory
    await after.open()
    try:
        await lapse()
        assert await after.orphans() == []
    finally:
        with contextlib.suppress(Exception):
            await before.aclose()
        await after.aclose()
