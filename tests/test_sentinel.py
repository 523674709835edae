"""``REDIS_URL=redis+sentinel://…``: the URL, and a real failover under a running bot.

The servers are real and the test's own: a primary, a replica (``--replicaof``) and a
``redis-server --sentinel`` watching them (quorum 1, a master is down after 1 s),
all with passwords, on free ports. The failover is the one Sentinel exists for:
the primary dies (SIGKILL), Sentinel promotes the replica, and the bot, which only
knows the sentinels' addresses, must go on answering from the new master —
history, leases and the control channel's pub/sub included. And the failover an
operator asks for (``SENTINEL FAILOVER``), where the old master stays up and writable
for seconds: no write may go there once the master is switched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_sync
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.app import StartupError, connect_redis
from bot.config import ConfigError, load_settings
from bot.delivery.render import render
from gptalk.redis_url import SentinelURL, parse_sentinel_url, redis_from_url, url_secrets
from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import DEFAULT_ANSWER, FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.redis_server import start_redis, start_sentinel, stop_process
from tests.test_cli import CliResult, cli_env, run_cli

MASTER = "gptalk-master"
PASSWORD = "master-pass-Q7"  # requirepass of the primary and the replica
SENTINEL_PASSWORD = "sentinel-pass-Z3"  # requirepass of the sentinel
SETTLE_TIMEOUT = 30.0

Server = tuple[subprocess.Popen[bytes], int]


class Sentinels:
    """A primary, its replica and one sentinel, stopped by :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None, "the tests need redis-server on PATH"
        auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD]
        # A replica's first full sync would wait 5 s for more replicas to share it.
        auth += ["--repl-diskless-sync-delay", "0"]
        self._procs: list[subprocess.Popen[bytes]] = []
        self._clients: dict[int, redis_sync.Redis] = {}
        try:
            self.primary, self.primary_port = self._start(
                start_redis(exe, _mkdir(root / "primary"), auth, password=PASSWORD)
            )
            replica_of = ["--replicaof", "127.0.0.1", str(self.primary_port)]
            self.replica, self.replica_port = self._start(
                start_redis(exe, _mkdir(root / "replica"), auth + replica_of, password=PASSWORD)
            )
            config = [
                f"requirepass {SENTINEL_PASSWORD}",
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 1",
                f"sentinel auth-pass {MASTER} {PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 10000",
            ]
            _, self.port = self._start(
                start_sentinel(exe, _mkdir(root / "sentinel"), config, password=SENTINEL_PASSWORD)
            )
            self.sentinel = redis_sync.Redis(port=self.port, password=SENTINEL_PASSWORD)
            self._wait(lambda: self.client(self.replica_port).info("replication")[
                "master_link_status"
            ] == "up")  # fmt: skip
            # Sentinel learns of the replica from the primary's INFO, at once.
            self._wait(lambda: bool(self.sentinel.sentinel_slaves(MASTER)))
        except BaseException:
            self.stop()
            raise

    def _start(self, started: Server) -> Server:
        self._procs.append(started[0])
        return started

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "the Redis servers did not get ready"
            time.sleep(0.05)

    def url(self, *, sentinel_password: str | None = SENTINEL_PASSWORD) -> str:
        # A dead sentinel first (nothing may listen on port 1): the client must skip
        # it for the live one.
        query = f"?sentinel_password={sentinel_password}" if sentinel_password else ""
        return f"redis+sentinel://:{PASSWORD}@127.0.0.1:1,127.0.0.1:{self.port}/{MASTER}/0{query}"

    def client(self, port: int) -> redis_sync.Redis:
        if port not in self._clients:
            self._clients[port] = redis_sync.Redis(port=port, password=PASSWORD, socket_timeout=5)
        return self._clients[port]

    def master_port(self) -> int | None:
        """The master's port as redis-py's Sentinel client accepts it (up, not in doubt)."""
        masters = cast("dict[str, dict[str, Any]]", self.sentinel.sentinel_masters())
        state = masters.get(MASTER)
        if not state or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
            return None
        return int(state["port"])

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        if hasattr(self, "sentinel"):
            self.sentinel.close()
        for proc in self._procs:
            stop_process(proc)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    servers = Sentinels(tmp_path)
    try:
        yield servers
    finally:
        servers.stop()


# ---------------------------------------------------------------------- the URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster",
            SentinelURL(sentinels=(("h1", 26379), ("h2", 26380)), master="mymaster"),
        ),
        (
            "redis+sentinel://user:p%40ss@h1,[::1]:5000/mymaster/3?sentinel_password=s%2Fp",
            SentinelURL(
                sentinels=(("h1", 26379), ("::1", 5000)),
                master="mymaster",
                db=3,
                username="user",
                password="p@ss",
                sentinel_password="s/p",
            ),
        ),
        (
            "REDIS+SENTINEL://:pw@10.0.0.1:26379/m/",
            SentinelURL(sentinels=(("10.0.0.1", 26379),), master="m", password="pw"),
        ),
    ],
)
def test_sentinel_url_is_parsed(url: str, expected: SentinelURL) -> None:
    parsed = parse_sentinel_url(url)
    assert parsed == expected
    assert "pw" not in repr(parsed)
    assert "p@ss" not in repr(parsed)


def test_the_passwords_are_known_secrets() -> None:
    url = "redis+sentinel://u:master-pw@h/m?sentinel_password=sentinel-pw"
    assert sorted(url_secrets(url)) == ["master-pw", "sentinel-pw"]
    assert url_secrets("redis://:plain-pw@h:6379/0") == ["plain-pw"]
    assert url_secrets("redis+sentinel://h/m") == []


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:s3cret-pass",  # forgot "@host:port/master": the port is the password
        "redis+sentinel://:s3cret-pass@h1:26379",  # no master name
        "redis+sentinel://:s3cret-pass@h1:x/m",
        "redis+sentinel://:s3cret-pass@h1:26379,/m",
        "redis+sentinel://:s3cret-pass@[::1/m",
        "redis+sentinel://:s3cret-pass@h1/m/zero",
        "redis+sentinel://h1/m?s3cret-pass",  # an option named by the password
        "redis+sentinel://h1/m?password=s3cret-pass",
    ],
)
def test_a_bad_sentinel_url_is_one_line_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("REDIS_URL: is not a valid Redis Sentinel URL"), message
    assert len(message.splitlines()) == 1
    assert "s3cret-pass" not in message


def test_a_good_sentinel_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/2?sentinel_password=sp"
    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings().redis_url == url


async def test_unreachable_sentinels_exit_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    url = "redis+sentinel://:s3cret-pass@127.0.0.1:1/m?sentinel_password=s3cret-2"
    proc = await start_bot(bot_env(tg, fake_gptalk, REDIS_URL=url), tmp_path)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 1, text
    [line] = text.strip().splitlines()
    assert line.startswith("gptalk-bot: REDIS_URL: cannot reach Redis (No master found for 'm'")
    assert "s3cret" not in text


# ---------------------------------------------------------------------- passwords, for real


async def test_the_passwords_reach_the_sentinel_and_the_master(sentinels: Sentinels) -> None:
    redis = await connect_redis(sentinels.url())
    try:
        await redis.set("through-sentinel", "yes")
    finally:
        await redis.aclose()
    assert sentinels.client(sentinels.primary_port).get("through-sentinel") == b"yes"

    for url, named in [
        (sentinels.url(sentinel_password="wrong-sentinel-pass"), "AuthenticationError"),
        (sentinels.url(sentinel_password=None), "AuthenticationError"),
        (sentinels.url().replace(PASSWORD, "wrong-master-pass"), "invalid"),
    ]:
        with pytest.raises(StartupError) as info:
            await connect_redis(url)
        message = str(info.value)
        assert message.startswith("REDIS_URL: cannot reach Redis"), message
        assert named in message, message
        assert len(message.splitlines()) == 1
        for secret in ("wrong-sentinel-pass", "wrong-master-pass", SENTINEL_PASSWORD, PASSWORD):
            assert secret not in message


async def test_a_busy_pool_waits_for_a_connection(sentinels: Sentinels) -> None:
    # As with one server (BlockingConnectionPool): a command waits for a free
    # connection instead of failing with "Too many connections".
    redis = redis_from_url(sentinels.url(), max_connections=1, timeout=5)
    try:
        popped, stored = await asyncio.gather(redis.blpop(["empty"], 0.3), redis.set("k", "v"))
    finally:
        await redis.aclose()
    assert (popped, stored) == (None, True)


async def test_the_cli_shares_its_token_through_sentinel(
    sentinels: Sentinels, fake_gptalk: FakeGPTalk
) -> None:
    env = cli_env(GPTALK_URL=fake_gptalk.url, REDIS_URL=sentinels.url())
    result = await run_cli("hi", env=env)
    assert result == CliResult(0, DEFAULT_ANSWER + "\n", "")
    token = sentinels.client(sentinels.primary_port).hget("gptalk:auth", "token")
    assert token is not None
    assert token.decode() == fake_gptalk.issued_tokens()[0]


# ---------------------------------------------------------------------- failover

EXPECTED = render(DEFAULT_ANSWER).text


async def _bot_answering(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    sentinels: Sentinels,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> tuple[asyncio.subprocess.Process, dict[str, Any], dict[str, Any]]:
    """``python -m bot`` through the sentinels, with Ann's first question answered:
    the process, Ann and her chat."""
    proc = await start_bot(bot_env(tg, fake_gptalk, REDIS_URL=sentinels.url()), tmp_path)
    procs.append(proc)
    await tg.wait_for(lambda: tg.long_poll_pending, timeout=SETTLE_TIMEOUT)
    ann = tg.add_user(42, "Ann")
    chat = tg.private_chat(ann)
    first = tg.user_message(chat, ann, "first question")
    await tg.wait_for(
        lambda: tg.visible_text(42, first["message_id"]) == EXPECTED, timeout=SETTLE_TIMEOUT
    )
    return proc, ann, chat


async def _stopped_cleanly(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM; the log, checked for exit 0, no traceback and no password."""
    proc.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log
    for secret in (PASSWORD, SENTINEL_PASSWORD):
        assert secret not in log
    return log


async def test_a_failover_keeps_the_bot_answering(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    sentinels: Sentinels,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    proc, ann, chat = await _bot_answering(tg, fake_gptalk, sentinels, tmp_path, procs)
    primary = sentinels.client(sentinels.primary_port)
    history = "gptalk:history:42"
    await tg.wait_for(lambda: primary.llen(history) == 2, timeout=SETTLE_TIMEOUT)
    # Replication is asynchronous: only what reached the replica survives the kill.
    # WAIT counts this client's last write, which comes after all of the bot's.
    primary.set("test:replicated", 1)
    assert primary.wait(1, 5000) == 1
    assert sentinels.client(sentinels.replica_port).llen(history) == 2

    killed = time.monotonic()
    sentinels.primary.kill()
    await tg.wait_for(
        lambda: sentinels.master_port() == sentinels.replica_port, timeout=SETTLE_TIMEOUT
    )
    promoted = time.monotonic()
    second = tg.user_message(chat, ann, "second question")
    await tg.wait_for(
        lambda: tg.visible_text(42, second["message_id"]) == EXPECTED, timeout=SETTLE_TIMEOUT
    )
    answered = time.monotonic()
    # The second prompt was built from the history on the new master.
    assert fake_gptalk.prompts[-1].startswith("User: first question\nAssistant: **Autumn")
    assert fake_gptalk.prompts[-1].endswith("User: second question\nAssistant:")
    new_master = sentinels.client(sentinels.replica_port)
    await tg.wait_for(lambda: new_master.llen(history) == 4, timeout=SETTLE_TIMEOUT)

    # Pub/sub: the control channel is subscribed again, on the new master, and /stop
    # (published there) reaches the running answer.
    await tg.wait_for(
        lambda: new_master.pubsub_numsub("gptalk:control")[0][1] >= 1, timeout=SETTLE_TIMEOUT
    )
    fake_gptalk.answer = "word " * 400
    fake_gptalk.chunk_size, fake_gptalk.delay = 5, 0.05
    third = tg.user_message(chat, ann, "talk a lot")
    await tg.wait_for(
        lambda: any(m.reply_to == third["message_id"] for m in tg.bot_messages(42)),
        timeout=SETTLE_TIMEOUT,
    )
    tg.user_message(chat, ann, "/stop")
    await tg.wait_for(
        lambda: tg.visible_text(42, third["message_id"]).endswith("Stopped."),
        timeout=SETTLE_TIMEOUT,
    )
    assert not [m for m in tg.bot_messages(42) if m.text.startswith("Nothing to stop")]

    await _stopped_cleanly(proc)
    print(
        f"\nfailover: promoted {promoted - killed:.1f} s after the kill; the next prompt "
        f"answered {(answered - promoted) * 1000:.0f} ms after that "
        f"({answered - killed:.1f} s in all)"
    )


async def test_a_requested_failover_moves_every_connection_at_once(
    sentinels: Sentinels, caplog: pytest.LogCaptureFixture
) -> None:
    # SENTINEL FAILOVER (a planned switch, for maintenance) leaves the old master up
    # and writable until Sentinel makes it a replica, seconds later; a connection still
    # open to it would write there, and the resync would throw those writes away.
    redis = redis_from_url(
        sentinels.url(),
        max_connections=4,
        timeout=5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    try:
        # Two connections to the primary: one stays idle in the pool, one is in use.
        await asyncio.gather(redis.set("before-1", 1), redis.set("before-2", 1))
        waiting = asyncio.create_task(redis.blpop(["jobs"], 20))
        await asyncio.sleep(0.2)
        caplog.set_level(logging.WARNING, logger="gptalk.redis")
        assert sentinels.sentinel.sentinel_failover(MASTER)

        deadline = time.monotonic() + SETTLE_TIMEOUT
        while sentinels.master_port() != sentinels.replica_port:
            assert time.monotonic() < deadline, "Sentinel did not switch"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the announcement comes with the switch: ample
        old = sentinels.client(sentinels.primary_port)
        assert old.info("replication")["role"] == "master"  # not demoted yet: still writable

        await redis.set("after", 1)
        new = sentinels.client(sentinels.replica_port)
        assert new.get("after") == b"1"
        assert old.get("after") is None
        # The command that was waiting on the old master waits on the new one now.
        new.rpush("jobs", "job-1")
        assert tuple(await asyncio.wait_for(waiting, 10)) == (b"jobs", b"job-1")
    finally:
        await redis.aclose()
    assert "switched master 'gptalk-master'" in caplog.text
    for secret in (PASSWORD, SENTINEL_PASSWORD):
        assert secret not in caplog.text


async def test_a_requested_failover_under_the_bot_keeps_every_write(
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    sentinels: Sentinels,
    tmp_path: Path,
    procs: list[asyncio.subprocess.Process],
) -> None:
    proc, ann, chat = await _bot_answering(tg, fake_gptalk, sentinels, tmp_path, procs)
    history = "gptalk:history:42"
    old = sentinels.client(sentinels.primary_port)
    await tg.wait_for(lambda: old.llen(history) == 2, timeout=SETTLE_TIMEOUT)
    old.set("test:replicated", 1)
    assert old.wait(1, 5000) == 1

    assert sentinels.sentinel.sentinel_failover(MASTER)
    await tg.wait_for(
        lambda: sentinels.master_port() == sentinels.replica_port, timeout=SETTLE_TIMEOUT
    )
    await asyncio.sleep(0.5)  # the announcement comes with the switch
    second = tg.user_message(chat, ann, "second question")
    await tg.wait_for(
        lambda: tg.visible_text(42, second["message_id"]) == EXPECTED, timeout=SETTLE_TIMEOUT
    )
    assert fake_gptalk.prompts[-1].startswith("User: first question\nAssistant: **Autumn")
    # The old master is still up and writable (Sentinel demotes it seconds later, and
    # its resync then drops what it took), yet the second turn went to the new one.
    new = sentinels.client(sentinels.replica_port)
    await tg.wait_for(lambda: new.llen(history) == 4, timeout=SETTLE_TIMEOUT)
    assert old.info("replication")["role"] == "master"
    assert old.llen(history) == 2
    assert "switched master 'gptalk-master'" in await _stopped_cleanly(proc)
