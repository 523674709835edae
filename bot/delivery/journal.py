"""The journal of answers in flight: what each streaming answer has shown so far.

A process that dies mid-answer (``kill -9``, OOM, power loss) cannot mark the
message it was writing as cut short. So while an answer streams, its entry —
chat, messages, text shown so far — stays in the journal under the name of its
**owner**, the process writing it. An owner holds a *lease* it renews while it is
alive; an entry whose owner's lease has lapsed belongs to a dead process, and
:class:`~bot.delivery.recovery.Recovery` (in any live process) ends it.

A lease holds the owner's *incarnation*, a random id per start: a process that
restarts under the same replica id (in a container: same hostname, pid 1) does
not mistake its predecessor's entries for its own live ones. Replica ids must
therefore be unique among running processes.

Entries expire ``entry_ttl`` seconds after their last write, so that answers no
process ever recovers (the bot stayed down) do not pile up.

:class:`RedisJournal` is shared by every process on the Redis. :class:`MemoryJournal`
lives and dies with its process, so after a crash there is nothing to recover;
it keeps the same bookkeeping (and can be shared between journals in one process,
for the contract tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.delivery.render import Entity, Rendered
from bot.storage.keys import ConversationKey, Keys
from bot.tasks import stop_task

__all__ = [
    "DEFAULT_ENTRY_TTL",
    "DEFAULT_LEASE",
    "Entry",
    "InFlight",
    "Journal",
    "MemoryJournal",
    "MemorySpace",
    "RedisJournal",
    "default_replica_id",
    "digest",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE: Final = 15.0  # seconds a silent owner counts as alive
DEFAULT_ENTRY_TTL: Final = 86400  # seconds an entry outlives its last write
_NOTHING_SHOWN: Final = Rendered("")


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def digest(text: str) -> str:
    """A short fingerprint of a user turn: recovery checks that the history still
    ends with the question before recording the interrupted answer after it."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One answer in flight."""

    id: str  # "{conversation}/{random}"
    conversation: ConversationKey
    reply_to: int | None  # the user's message the answer replies to
    question: str  # digest() of the user turn being answered
    language: str | None = None  # the asker's language_code
    asker: int | None = None  # whose question it answers (bot.answering.asker_of)
    message_ids: tuple[int, ...] = ()
    markdown: str = ""  # the answer consumed so far
    last: Rendered = _NOTHING_SHOWN  # the last message as Telegram shows it
    # Recovery's failed tries to mark it interrupted, and when (Unix time) the next
    # may be: every process that sweeps keeps the same back-off.
    tries: int = 0
    retry_at: float = 0.0
    owner: str = ""  # filled in when read back

    @classmethod
    def new(
        cls,
        conversation: ConversationKey,
        *,
        reply_to: int | None,
        question: str,
        language: str | None = None,
        asker: int | None = None,
    ) -> Entry:
        return cls(
            id=f"{conversation}/{secrets.token_hex(6)}",
            conversation=conversation,
            reply_to=reply_to,
            question=digest(question),
            language=language,
            asker=asker,
        )

    def of(self, conversation: ConversationKey) -> bool:
        return self.id.startswith(f"{conversation}/")

    def to_json(self) -> str:
        return json.dumps(
            {
                "chat_id": self.conversation.chat_id,
                "thread_id": self.conversation.thread_id,
                "reply_to": self.reply_to,
                "question": self.question,
                "language": self.language,
                "asker": self.asker,
                "message_ids": list(self.message_ids),
                "markdown": self.markdown,
                "text": self.last.text,
                "entities": [
                    [e.type, e.offset, e.length, dict(e.extra)] for e in self.last.entities
                ],
                "tries": self.tries,
                "retry_at": self.retry_at,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, answer_id: str, raw: str | bytes, owner: str) -> Entry:
        data = json.loads(raw)
        entities = tuple(
            Entity(kind, offset, length, tuple(sorted(extra.items())))
            for kind, offset, length, extra in data["entities"]
        )
        return cls(
            id=answer_id,
            conversation=ConversationKey(data["chat_id"], data["thread_id"]),
            reply_to=data["reply_to"],
            question=data["question"],
            language=data["language"],
            asker=data.get("asker"),
            message_ids=tuple(data["message_ids"]),
            markdown=data["markdown"],
            last=Rendered(data["text"], entities),
            tries=data.get("tries", 0),  # entries written before retries were kept
            retry_at=data.get("retry_at", 0.0),
            owner=owner,
        )


class Journal(Protocol):
    owner: str

    async def open(self) -> None:
        """Take this process's lease and keep renewing it until :meth:`aclose`."""
        ...

    async def aclose(self) -> None:
        """Stop renewing and give the lease up: entries left now are orphans."""
        ...

    async def begin(self, entry: Entry) -> None:
        """Record a new answer in flight, owned by this process."""
        ...

    async def update(self, entry: Entry) -> None:
        """Rewrite an entry (and its expiry); nothing if it is gone or no longer ours."""
        ...

    async def end(self, answer_id: str) -> None:
        """The answer is over: forget it."""
        ...

    async def forget(self, conversation: ConversationKey) -> None:
        """Forget every entry of the conversation (``/new``), whoever owns it."""
        ...

    async def orphans(self) -> list[Entry]:
        """Entries whose owner's lease has lapsed."""
        ...

    async def claim(self, answer_id: str) -> Entry | None:
        """Become the owner of an orphan; None when it is gone or its owner is alive."""
        ...

    async def release(self, entry: Entry) -> None:
        """Give a claimed entry up again (orphaned), for a later sweep to retry; it
        is stored as ``entry`` (with its tries so far)."""
        ...


async def _keep_renewing(renew: Callable[[], Any], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await renew()
        except RedisError as exc:  # the next renewal may work; the lease lasts 3 intervals
            log.warning("journal lease not renewed: Redis failed (%s)", exc)


class _Leased:
    """Lease bookkeeping shared by both journals: an incarnation and its renewal."""

    def __init__(self, owner: str | None, lease: float) -> None:
        self.owner = owner or default_replica_id()
        self.lease = lease
        self.incarnation = secrets.token_hex(8)
        self._renewal: asyncio.Task[None] | None = None

    async def _renew(self) -> None:
        raise NotImplementedError

    async def _give_up(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        await self._renew()
        if self._renewal is None:
            self._renewal = asyncio.create_task(_keep_renewing(self._renew, self.lease / 3))

    async def aclose(self) -> None:
        await stop_task(self._renewal)
        self._renewal = None
        await self._give_up()


@dataclass
class MemorySpace:
    """Where memory journals keep their entries and leases (one per process)."""

    clock: Callable[[], float] = time.monotonic
    # id -> (owner, incarnation, entry, expires at)
    entries: dict[str, tuple[str, str, Entry, float]] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # owner -> (inc., until)

    def live(self, owner: str, incarnation: str) -> bool:
        lease = self.leases.get(owner)
        return lease is not None and lease[0] == incarnation and lease[1] > self.clock()

    def prune(self) -> None:
        now = self.clock()
        for answer_id in [k for k, v in self.entries.items() if v[3] <= now]:
            del self.entries[answer_id]


class MemoryJournal(_Leased):
    """Entries in this process: they die with it, so there is never an orphan to
    recover after a crash; the bookkeeping is the same as Redis's."""

    def __init__(
        self,
        *,
        owner: str | None = None,
        lease: float = DEFAULT_LEASE,
        entry_ttl: float = DEFAULT_ENTRY_TTL,
        space: MemorySpace | None = None,
    ) -> None:
        super().__init__(owner, lease)
        self._ttl = entry_ttl
        self._space = space or MemorySpace()

    async def _renew(self) -> None:
        self._space.leases[self.owner] = (self.incarnation, self._space.clock() + self.lease)

    async def _give_up(self) -> None:
        if self._space.live(self.owner, self.incarnation):
            del self._space.leases[self.owner]

    def _put(self, owner: str, incarnation: str, entry: Entry) -> None:
        expires = self._space.clock() + self._ttl
        self._space.entries[entry.id] = (owner, incarnation, entry, expires)

    def _ours(self, answer_id: str) -> Entry | None:
        self._space.prune()
        found = self._space.entries.get(answer_id)
        if found is None or (found[0], found[1]) != (self.owner, self.incarnation):
            return None
        return found[2]

    async def begin(self, entry: Entry) -> None:
        self._put(self.owner, self.incarnation, entry)

    async def update(self, entry: Entry) -> None:
        if self._ours(entry.id) is not None:
            self._put(self.owner, self.incarnation, entry)

    async def end(self, answer_id: str) -> None:
        self._space.entries.pop(answer_id, None)

    async def forget(self, conversation: ConversationKey) -> None:
        for answer_id in [k for k, v in self._space.entries.items() if v[2].of(conversation)]:
            del self._space.entries[answer_id]

    async def orphans(self) -> list[Entry]:
        self._space.prune()
        return [
            replace(entry, owner=owner)
            for owner, incarnation, entry, _ in self._space.entries.values()
            if not self._space.live(owner, incarnation)
        ]

    async def claim(self, answer_id: str) -> Entry | None:
        self._space.prune()
        found = self._space.entries.get(answer_id)
        if found is None or self._space.live(found[0], found[1]):
            return None
        _, _, entry, expires = found
        self._space.entries[answer_id] = (self.owner, self.incarnation, entry, expires)
        return replace(entry, owner=self.owner)

    async def release(self, entry: Entry) -> None:
        if self._ours(entry.id) is not None:
            _, _, _, expires = self._space.entries[entry.id]
            self._space.entries[entry.id] = ("", "", replace(entry, owner=""), expires)


# KEYS[1] = entry hash; ARGV = owner, incarnation, ttl, field, value, …
# Writes only while the entry exists and is ours: an update arriving after the
# answer ended, or after another process took the entry over, changes nothing.
_IF_OURS: Final = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'incarnation')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] = entry hash; ARGV = owner key prefix, new owner, new incarnation.
# The owner's lease is read by name from the entry, hence the prefix argument.
_CLAIM: Final = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'incarnation', 'entry')
if not held[3] then return false end
if held[1] ~= '' and redis.call('GET', ARGV[1] .. held[1]) == held[2] then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'incarnation', ARGV[3])
return held[3]
"""

# KEYS[1] = owner lease; ARGV[1] = incarnation. A successor's lease stays.
_GIVE_UP: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisJournal(_Leased):
    """Entries in Redis, shared by every process: ``P:journal`` (set of ids),
    ``P:journal:{id}`` (hash: ``owner``, ``incarnation``, ``entry`` JSON; expires),
    ``P:owner:{replica}`` (the incarnation, expiring unless renewed)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        owner: str | None = None,
        lease: float = DEFAULT_LEASE,
        entry_ttl: int = DEFAULT_ENTRY_TTL,
    ) -> None:
        super().__init__(owner, lease)
        self._redis, self._keys, self._ttl = redis, keys, entry_ttl
        self._if_ours = redis.register_script(_IF_OURS)
        self._claim = redis.register_script(_CLAIM)
        self._give_up_script = redis.register_script(_GIVE_UP)

    async def _renew(self) -> None:
        lease_ms = max(1, round(self.lease * 1000))
        await self._redis.set(self._keys.owner(self.owner), self.incarnation, px=lease_ms)

    async def _give_up(self) -> None:
        try:
            await self._give_up_script(keys=[self._keys.owner(self.owner)], args=[self.incarnation])
        except RedisError as exc:  # it lapses by itself
            log.warning("journal lease not given up: Redis failed (%s)", exc)

    async def begin(self, entry: Entry) -> None:
        key = self._keys.journal_entry(entry.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "owner": self.owner,
                    "incarnation": self.incarnation,
                    "entry": entry.to_json(),
                },
            )
            pipe.expire(key, self._ttl)
            pipe.sadd(self._keys.journal, entry.id)
            await pipe.execute()

    async def update(self, entry: Entry) -> None:
        await self._write_if_ours(entry.id, "entry", entry.to_json())

    async def _write_if_ours(self, answer_id: str, *fields: str) -> None:
        await self._if_ours(
            keys=[self._keys.journal_entry(answer_id)],
            args=[self.owner, self.incarnation, self._ttl, *fields],
        )

    async def end(self, answer_id: str) -> None:
        await self._remove([answer_id])

    async def _remove(self, answer_ids: Sequence[str]) -> None:
        if not answer_ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._keys.journal_entry(a) for a in answer_ids))
            pipe.srem(self._keys.journal, *answer_ids)
            await pipe.execute()

    async def _ids(self) -> list[str]:
        return sorted(_text(raw) for raw in await self._redis.smembers(self._keys.journal))

    async def forget(self, conversation: ConversationKey) -> None:
        prefix = f"{conversation}/"
        await self._remove([a for a in await self._ids() if a.startswith(prefix)])

    async def orphans(self) -> list[Entry]:
        ids = await self._ids()
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for answer_id in ids:
                pipe.hmget(self._keys.journal_entry(answer_id), ["owner", "incarnation", "entry"])
            held: list[list[bytes | str | None]] = await pipe.execute()
        found = {a: h for a, h in zip(ids, held, strict=True) if h[2] is not None}
        expired = [a for a in ids if a not in found]
        if expired:  # their keys expired: drop them from the index
            await self._redis.srem(self._keys.journal, *expired)
        owners = sorted({_text(h[0] or b"") for h in found.values()} - {""})
        leases: dict[str, str | None] = {}
        if owners:
            raw = await self._redis.mget([self._keys.owner(o) for o in owners])
            leases = {
                o: _text(v) if v is not None else None for o, v in zip(owners, raw, strict=True)
            }
        orphans = []
        for answer_id, (owner, incarnation, entry) in found.items():
            owner_s, incarnation_s = _text(owner or b""), _text(incarnation or b"")
            if owner_s and leases.get(owner_s) == incarnation_s:
                continue  # a live owner's answer: never touched
            assert entry is not None
            orphans.append(Entry.from_json(answer_id, entry, owner_s))
        return orphans

    async def claim(self, answer_id: str) -> Entry | None:
        raw = await self._claim(
            keys=[self._keys.journal_entry(answer_id)],
            args=[self._keys.owner(""), self.owner, self.incarnation],
        )
        return None if raw is None else Entry.from_json(answer_id, raw, self.owner)

    async def release(self, entry: Entry) -> None:
        await self._write_if_ours(
            entry.id, "owner", "", "incarnation", "", "entry", entry.to_json()
        )


class InFlight:
    """One answer's entry, as the answerer keeps it.

    Written when the answer starts; rewritten after each message sent or edited
    (so at most about once a second) by a background writer that always writes the
    newest state, so that the journal never holds up the next edit, even when
    Redis hangs; removed when the answer ends. A journal failure costs only this
    answer's crash protection, never the answer.
    """

    def __init__(self, journal: Journal, entry: Entry) -> None:
        self._journal, self._entry = journal, entry
        self._latest: Entry | None = None
        self._writer: asyncio.Task[None] | None = None
        self._warned = False

    def _failed(self, exc: RedisError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("answer in chat %s not journaled: Redis failed (%s)",
                        self._entry.conversation.chat_id, exc)  # fmt: skip

    async def begin(self) -> None:
        try:
            await self._journal.begin(self._entry)
        except RedisError as exc:
            self._failed(exc)

    async def progress(self, message_ids: tuple[int, ...], markdown: str, last: Rendered) -> None:
        """The streaming reply's ``on_progress``: returns at once."""
        self._latest = replace(self._entry, message_ids=message_ids, markdown=markdown, last=last)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while self._latest is not None:
            entry, self._latest = self._latest, None
            try:
                await self._journal.update(entry)
            except RedisError as exc:
                self._failed(exc)

    async def end(self) -> None:
        self._latest = None
        if self._writer is not None:
            await self._writer  # bounded by Redis's command timeout
        try:
            await self._journal.end(self._entry.id)
        except RedisError as exc:
            self._failed(exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
