"""Redis outages end to end: down at startup, gone mid-run and back, hung while streaming.

Every test here runs its *own* redis-server (started, stopped, paused and restarted by the
test), never the session's shared one. The bot's Redis client has 5 s socket timeouts
(``bot.app.connect_redis``): a hung Redis costs a request at most that long.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.delivery.render import render
from bot.storage.keys import ConversationKey
from tests.bot_harness import BotHarness
from tests.bot_process import bot_env
from tests.bot_process import start_bot as start_bot_process
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.redis_server import start_redis, stop_process

UNAVAILABLE_WORDS = "temporarily unavailable"


class RedisServer:
    """A dedicated redis-server that a test may stop, restart on the same port, or hang."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self._exe, self._workdir = exe, workdir
        self._proc, self.port = start_redis(exe, workdir)
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        stop_process(self._proc)

    def restart(self) -> None:
        """Start again on the same port (empty: nothing is persisted)."""
        assert self._proc.poll() is not None, "stop it first"
        cmd = [
            self._exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._workdir),
        ]  # fmt: skip
        with (self._workdir / "redis-server.log").open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis_sync.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis_sync.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"redis-server did not come back on port {self.port}")

    def pause(self) -> None:
        """Hang it: connections are accepted by the kernel, nothing is ever answered."""
        os.kill(self._proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
        self.paused = False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH", pytrace=False)
    server = RedisServer(exe, tmp_path)
    try:
        yield server
    finally:
        server.stop()  # resumes first when it was left hung


@pytest.fixture
async def harnesses() -> AsyncIterator[list[BotHarness]]:
    started: list[BotHarness] = []
    yield started
    for harness in started:
        await harness.stop()


async def start_bot(
    harnesses: list[BotHarness],
    tg: FakeTelegram,
    gptalk: FakeGPTalk,
    server: RedisServer,
    **settings: Any,
) -> BotHarness:
    harness = BotHarness(tg, gptalk, redis_url=server.url, **settings)
    harnesses.append(harness)
    return await harness.start()


def say(harness: BotHarness, user: dict[str, Any], text: str) -> int:
    """``user`` writes ``text`` in private; returns the update's id."""
    harness.say(user, text)
    return int(max(u["update_id"] for u in harness.tg.pending_updates))


async def handled(harness: BotHarness, *update_ids: int, within: float = 15.0) -> None:
    """Wait until these updates have been handled. Unlike ``BotHarness.settle`` errors are
    allowed: a handler that hits a dead Redis fails on purpose here, and the dispatcher's
    error handler answers for it (just *after* the tracker has seen the update done)."""
    await harness.tg.wait_for(lambda: set(update_ids) <= harness.tracker.done, timeout=within)


def more_than(tg: FakeTelegram, chat_id: int, count: int) -> Callable[[], bool]:
    return lambda: len(tg.bot_messages(chat_id)) > count


def new_texts(tg: FakeTelegram, chat_id: int, before: int) -> list[str]:
    return [m.text for m in tg.bot_messages(chat_id)[before:]]


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "redis" in r.getMessage().lower()
    ]


# --- down at startup ---------------------------------------------------------------------------


async def test_redis_down_at_startup_exits_with_one_clear_line(
    own_redis: RedisServer, tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    own_redis.stop()  # a real Redis URL whose server is not running
    env = bot_env(tg, fake_gptalk, REDIS_URL=own_redis.url)
    proc = await start_bot_process(env, tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode not in (0, None)
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("gptalk-bot: REDIS_URL: cannot reach Redis")
    assert tg.calls_to("getUpdates") == []  # it never started polling


# --- gone mid-run, then back -------------------------------------------------------------------


async def test_redis_gone_mid_run_gives_a_notice_then_recovers_without_restart(
    own_redis: RedisServer,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    harnesses: list[BotHarness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await start_bot(harnesses, tg, fake_gptalk, own_redis)
    ann = harness.user(1, "Ann")
    expected = render(fake_gptalk.answer).text
    await handled(harness, say(harness, ann, "before the outage"))
    assert new_texts(tg, ann["id"], 0) == [expected]

    own_redis.stop()
    caplog.clear()
    submits = fake_gptalk.submits
    for i in range(4):
        before = len(tg.bot_messages(ann["id"]))
        await handled(harness, say(harness, ann, f"during the outage {i}"))
        # The error handler answers after the update's handler failed: wait for it.
        await tg.wait_for(more_than(tg, ann["id"], before), timeout=5)
        [notice] = new_texts(tg, ann["id"], before)
        assert UNAVAILABLE_WORDS in notice.lower()
        assert "Error" not in notice  # no exception text
    assert fake_gptalk.submits == submits  # nothing went upstream without storage
    assert harness.tracker.errors
    assert all(isinstance(e, RedisError) for e in harness.tracker.errors)
    # No crash loop: the dispatcher is still polling.
    assert harness._polling is not None
    assert not harness._polling.done()
    await tg.wait_for(lambda: tg.long_poll_pending, timeout=5)
    # No log flood: four failing prompts, at most a couple of warnings, no tracebacks.
    assert len(redis_warnings(caplog)) <= 2, redis_warnings(caplog)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    own_redis.restart()  # same port, the bot is not restarted
    harness.tracker.errors.clear()
    before = len(tg.bot_messages(ann["id"]))
    await handled(harness, say(harness, ann, "after the outage"))
    assert new_texts(tg, ann["id"], before) == [expected]
    assert fake_gptalk.submits == submits + 1
    assert harness.tracker.errors == []


async def test_redis_gone_in_a_group_answers_only_what_was_addressed(
    own_redis: RedisServer,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    harnesses: list[BotHarness],
) -> None:
    harness = await start_bot(harnesses, tg, fake_gptalk, own_redis)
    ann = harness.user(1, "Ann")
    group = tg.group_chat(-100_500, "Team")
    own_redis.stop()
    mention = "@gptalk_test_bot"
    harness.say(ann, "just chatting", chat=group)
    chatter = int(max(u["update_id"] for u in tg.pending_updates))
    harness.say(
        ann, f"{mention} hi", chat=group, entities=[{"type": "mention", "offset": 0, "length": 16}]
    )
    asked = int(max(u["update_id"] for u in tg.pending_updates))
    await handled(harness, chatter, asked)
    await tg.wait_for(more_than(tg, group["id"], 0), timeout=5)
    [notice] = new_texts(tg, group["id"], 0)
    assert UNAVAILABLE_WORDS in notice.lower()
    assert tg.bot_messages(group["id"])[0].reply_to is not None  # a reply to the mention
    await asyncio.sleep(0.5)
    assert len(tg.bot_messages(group["id"])) == 1  # the chatter got nothing


# --- hung while an answer streams --------------------------------------------------------------


async def test_hung_redis_does_not_hang_a_streaming_answer_or_new_prompts(
    own_redis: RedisServer,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    harnesses: list[BotHarness],
) -> None:
    fake_gptalk.answer = "A steady answer, " + "word " * 60
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~3.5 s of streaming
    expected = render(fake_gptalk.answer).text
    harness = await start_bot(harnesses, tg, fake_gptalk, own_redis)
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    streaming = say(harness, ann, "tell me something long")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])), timeout=10)
    assert new_texts(tg, ann["id"], 0) != [expected]  # still streaming

    try:
        own_redis.pause()
        hung_at = time.monotonic()
        newcomer = say(harness, bob, "anyone there?")

        await tg.wait_for(lambda: new_texts(tg, ann["id"], 0) == [expected], timeout=15)
        assert time.monotonic() - hung_at < 15

        # The new prompt needs Redis (rate limit, history): a readable notice, not silence.
        await tg.wait_for(lambda: bool(tg.bot_messages(bob["id"])), timeout=15)
        assert time.monotonic() - hung_at < 15
        [notice] = new_texts(tg, bob["id"], 0)
        assert UNAVAILABLE_WORDS in notice.lower()
        await handled(harness, newcomer)
    finally:
        own_redis.resume()

    # Ann's handler finishes too (its bookkeeping timed out or went through after SIGCONT).
    await handled(harness, streaming, within=20)
    assert harness._polling is not None
    assert not harness._polling.done()
    await handled(harness, say(harness, bob, "and now?"))
    assert new_texts(tg, bob["id"], 1) == [expected]


# --- stalled for longer than the lease ----------------------------------------------------------


async def test_a_stall_longer_than_the_lease_loses_no_waiting_prompt(
    own_redis: RedisServer,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    harnesses: list[BotHarness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis answers nobody (CLIENT PAUSE) for longer than a lease: the waiting prompt's
    place lapses meanwhile, yet it is answered, with one warning."""
    fake_gptalk.hold = asyncio.Event()  # the first answer runs until the stall is over
    expected = render(fake_gptalk.answer).text
    harness = await start_bot(harnesses, tg, fake_gptalk, own_redis, journal_lease=0.6)
    ann = harness.user(1, "Ann")
    first = harness.say(ann, "tell me something")
    waiting = harness.say(ann, "and something else")
    async with asyncio.timeout(10):
        while await harness.answerer.waiting_in(ConversationKey(ann["id"])) != 1:  # noqa: ASYNC110 - the count lives in Redis
            await asyncio.sleep(0.02)

    client = aioredis.Redis(port=own_redis.port)
    try:
        caplog.clear()
        await client.execute_command("CLIENT", "PAUSE", "2000")  # the lease is 0.6 s
        await client.ping()  # answered once the pause is over
    finally:
        await client.aclose()
    fake_gptalk.hold.set()

    await harness.settle()
    assert harness.replies(first) == [expected]
    assert harness.replies(waiting) == [expected]
    lost = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "lost its place" in r.getMessage()
    ]
    assert len(lost) == 1, lost
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- admin commands ----------------------------------------------------------------------------


async def test_admin_commands_during_an_outage_say_temporarily_unavailable(
    own_redis: RedisServer,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    harnesses: list[BotHarness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await start_bot(harnesses, tg, fake_gptalk, own_redis, admin_ids=frozenset({1}))
    admin = harness.user(1, "Ann")
    await handled(harness, say(harness, admin, "/token"))  # the shared token lives in Redis
    await tg.wait_for(more_than(tg, admin["id"], 0), timeout=5)

    own_redis.stop()
    caplog.clear()
    for command in ("/token", "/reset_token", "/stats"):
        before = len(tg.bot_messages(admin["id"]))
        await handled(harness, say(harness, admin, command))
        await tg.wait_for(more_than(tg, admin["id"], before), timeout=5)
        [notice] = new_texts(tg, admin["id"], before)
        assert UNAVAILABLE_WORDS in notice.lower(), (command, notice)
        assert "Error" not in notice
    # An outage, not a bug: no "unhandled error" with a traceback, at most one warning.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(redis_warnings(caplog)) <= 1, redis_warnings(caplog)
