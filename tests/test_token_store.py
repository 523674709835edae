"""Token stores: one contract suite over both stores, then Redis-only and multi-process tests.

The requirement under test: N requests cost exactly ceil(N / max_uses) logins,
sequential or concurrent, in one process or across several sharing one Redis,
and no token is ever used more than max_uses times.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gptalk import (
    APITimeoutError,
    GPTalkClient,
    LoginResult,
    MemoryTokenStore,
    RedisTokenStore,
    TokenStore,
)
from tests.fake_gptalk import FakeGPTalk

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Logins:
    """A login function that issues tok-1, tok-2, … and counts its calls."""

    def __init__(self, clock: Clock, lifetime: int = 3600, delay: float = 0.01) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self) -> LoginResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        token = f"tok-{self.calls}"
        expires_at = int(self.clock()) + self.lifetime
        return LoginResult(token, expires_at, {"token": token, "expires_at": expires_at})


StoreFactory = Callable[[Clock], TokenStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, redis: aioredis.Redis
) -> AsyncIterator[StoreFactory]:
    if request.param == "memory":
        yield lambda clock: MemoryTokenStore(clock=clock)
    else:
        yield lambda clock: RedisTokenStore(redis, prefix="t", clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_first_acquire_logs_in_and_reserves_one_use(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock)
    assert (await store.status()).has_token is False
    assert await store.acquire(login, max_uses=5) == "tok-1"
    status = await store.status()
    assert login.calls == 1
    assert (status.has_token, status.uses, status.max_uses, status.uses_left) == (True, 1, 5, 4)
    assert status.expires_at == int(clock.now) + 3600
    assert status.obtained_at == clock.now
    assert "tok-1" not in repr(status)


@pytest.mark.parametrize(
    ("requests", "max_uses"), [(1, 5), (5, 5), (6, 5), (11, 5), (7, 2), (3, 1)]
)
async def test_sequential_requests_cost_ceil_n_over_max_logins(
    make_store: StoreFactory, clock: Clock, requests: int, max_uses: int
) -> None:
    store, login = make_store(clock), Logins(clock)
    tokens = [await store.acquire(login, max_uses=max_uses) for _ in range(requests)]
    assert login.calls == math.ceil(requests / max_uses)
    assert max(Counter(tokens).values()) <= max_uses


async def test_concurrent_requests_cost_ceil_n_over_max_logins(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock)
    tokens = await asyncio.gather(*(store.acquire(login, max_uses=5) for _ in range(50)))
    assert login.calls == 10
    assert set(Counter(tokens).values()) == {5}


async def test_expired_token_is_replaced(make_store: StoreFactory, clock: Clock) -> None:
    store, login = make_store(clock), Logins(clock, lifetime=60)
    assert await store.acquire(login, max_uses=5) == "tok-1"
    clock.now += 60  # expires_at == now: still valid (login only when expires_at < now)
    assert await store.acquire(login, max_uses=5) == "tok-1"
    clock.now += 1
    assert await store.acquire(login, max_uses=5) == "tok-2"
    assert login.calls == 2


async def test_token_issued_already_expired_is_used_once_not_looped_on(
    make_store: StoreFactory, clock: Clock
) -> None:
    # Clock skew: a token that looks expired on arrival must not make acquire spin.
    store, login = make_store(clock), Logins(clock, lifetime=-10)
    assert await store.acquire(login, max_uses=5) == "tok-1"
    assert await store.acquire(login, max_uses=5) == "tok-2"
    assert login.calls == 2


async def test_failed_login_fails_every_waiter_with_one_attempt(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock, delay=0.05)
    login.error = RuntimeError("login down")
    results = await asyncio.gather(
        *(store.acquire(login, max_uses=5) for _ in range(20)), return_exceptions=True
    )
    assert login.calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    login.error = None
    assert await store.acquire(login, max_uses=5) == "tok-2"  # the next request tries again


async def test_invalidate_only_drops_the_named_token(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock)
    await store.acquire(login, max_uses=5)
    assert await store.invalidate("some-stale-token") is False
    assert (await store.status()).has_token
    assert await store.invalidate("tok-1") is True
    assert (await store.status()).has_token is False
    assert await store.acquire(login, max_uses=5) == "tok-2"
    assert await store.invalidate() is True  # unconditional, as /reset_token does
    assert await store.invalidate() is False
    assert await store.acquire(login, max_uses=5) == "tok-3"


async def test_a_cancelled_waiter_does_not_cancel_the_login_for_others(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock, delay=0.1)
    first = asyncio.create_task(store.acquire(login, max_uses=5))
    second = asyncio.create_task(store.acquire(login, max_uses=5))
    await asyncio.sleep(0.03)
    first.cancel()
    assert await second == "tok-1"
    assert login.calls == 1


# --- Redis only -------------------------------------------------------------------------


async def test_redis_key_layout(redis: aioredis.Redis, clock: Clock) -> None:
    store, login = RedisTokenStore(redis, prefix="bot1", clock=clock), Logins(clock)
    await store.acquire(login, max_uses=3)
    fields = await redis.hgetall("bot1:auth")
    assert fields == {
        b"token": b"tok-1",
        b"expires_at": str(int(clock.now) + 3600).encode(),
        b"uses": b"1",
        b"max_uses": b"3",
        b"obtained_at": repr(clock.now).encode(),
    }
    assert await redis.exists("bot1:auth:lock") == 0  # released after the login
    assert sorted(await redis.keys("*")) == [b"bot1:auth"]


async def test_the_stored_token_expires_at_its_expires_at(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store, login = RedisTokenStore(redis, prefix="exp", clock=clock), Logins(clock)
    assert await store.acquire(login, max_uses=5) == "tok-1"
    assert 3_599_000 < await redis.pttl("exp:auth") <= 3_600_000
    await redis.delete("exp:auth")

    login.lifetime = 1
    assert await store.acquire(login, max_uses=5) == "tok-2"
    assert await store.acquire(login, max_uses=5) == "tok-2"  # a use does not prolong it
    assert 500 < await redis.pttl("exp:auth") <= 1000
    for _ in range(40):  # gone within its second (by the real clock: the store's stands still)
        if not await redis.exists("exp:auth"):
            break
        await asyncio.sleep(0.05)
    assert await redis.exists("exp:auth") == 0
    assert await store.acquire(login, max_uses=5) == "tok-3"


async def test_redis_store_works_with_a_decoding_client(redis_url: str, clock: Clock) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store, login = RedisTokenStore(client, prefix="dec", clock=clock), Logins(clock)
        assert await store.acquire(login, max_uses=5) == "tok-1"
        assert (await store.status()).uses == 1
    finally:
        await client.aclose()


async def test_processes_sharing_redis_share_the_token(redis: aioredis.Redis, clock: Clock) -> None:
    # Two stores = two processes' worth of state (each its own single flight).
    login = Logins(clock, delay=0.02)
    stores = [RedisTokenStore(redis, prefix="s", clock=clock) for _ in "ab"]
    tokens = await asyncio.gather(*(stores[i % 2].acquire(login, max_uses=5) for i in range(100)))
    assert login.calls == 20
    assert set(Counter(tokens).values()) == {5}


async def test_prefixes_do_not_share_tokens(redis: aioredis.Redis, clock: Clock) -> None:
    login = Logins(clock)
    a = RedisTokenStore(redis, prefix="a", clock=clock)
    b = RedisTokenStore(redis, prefix="b", clock=clock)
    assert await a.acquire(login, max_uses=5) == "tok-1"
    assert await b.acquire(login, max_uses=5) == "tok-2"
    await b.invalidate()
    assert (await a.status()).has_token


async def test_waiters_wait_for_a_crashed_holders_lock_to_expire(
    redis: aioredis.Redis, clock: Clock
) -> None:
    await redis.set("c:auth:lock", "crashed-process", px=300)
    store = RedisTokenStore(redis, prefix="c", clock=clock)
    login = Logins(clock)
    assert await store.acquire(login, max_uses=5) == "tok-1"
    assert login.calls == 1


async def test_waiting_for_a_lock_gives_up_after_wait_timeout(
    redis: aioredis.Redis, clock: Clock
) -> None:
    await redis.set("w:auth:lock", "slow-process", px=60_000)
    store = RedisTokenStore(redis, prefix="w", clock=clock, wait_timeout=0.2)
    login = Logins(clock)
    with pytest.raises(APITimeoutError):
        await store.acquire(login, max_uses=5)
    assert login.calls == 0


async def test_the_lock_is_released_when_login_fails(redis: aioredis.Redis, clock: Clock) -> None:
    store, login = RedisTokenStore(redis, prefix="f", clock=clock), Logins(clock)
    login.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        await store.acquire(login, max_uses=5)
    assert await redis.exists("f:auth:lock") == 0


async def test_the_use_limit_is_the_smaller_of_stored_and_requested(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store, login = RedisTokenStore(redis, prefix="m", clock=clock), Logins(clock)
    await store.acquire(login, max_uses=2)  # stored max_uses = 2
    await store.acquire(login, max_uses=5)  # a process configured with 5 still stops at 2
    assert await store.acquire(login, max_uses=5) == "tok-2"


# --- several OS processes against the fake GPTalk ---------------------------------------


async def run_workers(
    fake: FakeGPTalk, redis_url: str, *, processes: int, requests: int, concurrency: int
) -> list[dict[str, int]]:
    args = [
        "--url", fake.url, "--redis-url", redis_url, "--prefix", "mp",
        "--requests", str(requests), "--concurrency", str(concurrency),
    ]  # fmt: skip
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.token_worker",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    for proc in procs:  # every worker is up before any starts: they really overlap
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = [await asyncio.wait_for(proc.communicate(), 120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * processes
    return [json.loads(out.splitlines()[-1]) for out, _ in outputs]


@pytest.mark.parametrize(
    ("processes", "requests", "concurrency"),
    [(4, 12, 1), (4, 50, 50)],
    ids=["sequential", "50-concurrent"],
)
async def test_login_count_across_processes(
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    processes: int,
    requests: int,
    concurrency: int,
) -> None:
    fake_gptalk.chunk_size = 0
    fake_gptalk.login_delay = 0.05  # widen the window in which processes race to log in
    results = await run_workers(
        fake_gptalk, redis_url, processes=processes, requests=requests, concurrency=concurrency
    )
    total = processes * requests
    assert sum(r["answers"] for r in results) == total
    assert fake_gptalk.submits == total
    assert fake_gptalk.logins == math.ceil(total / 5)
    assert fake_gptalk.spent_rejections == 0
    assert fake_gptalk.unauthorized == 0
    assert max(fake_gptalk.token_uses.values()) == 5
    print(f"{processes} processes x {requests} requests: {fake_gptalk.logins} logins")


# --- cost and fairness of a burst (issue 13) ---------------------------------------------


async def redis_commands(redis: aioredis.Redis) -> Counter[str]:
    """Commands executed since the last call (INFO commandstats, then CONFIG RESETSTAT)."""
    stats = await redis.info("commandstats")
    await redis.config_resetstat()
    counts = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    for bookkeeping in ("info", "config|resetstat", "config", "flushall", "ping"):
        counts.pop(bookkeeping, None)
    return counts


@pytest.mark.parametrize("stores", [1, 2])
async def test_a_burst_costs_a_linear_number_of_redis_commands(
    redis: aioredis.Redis, clock: Clock, stores: int
) -> None:
    # 300 simultaneous requests: the old per-waiter retries made ~N²/10 = 9,000 EVALSHA.
    login = Logins(clock, delay=0.002)
    shared = [RedisTokenStore(redis, prefix="b", clock=clock) for _ in range(stores)]
    await redis_commands(redis)
    tokens = await asyncio.gather(
        *(shared[i % stores].acquire(login, max_uses=5) for i in range(300))
    )
    commands = await redis_commands(redis)
    assert login.calls == 60
    assert set(Counter(tokens).values()) == {5}
    # Round trips per login: one reservation that finds nothing left (and takes the
    # lock), one that stores the token; a process waiting for another's login adds a
    # blocking wait and a reservation.
    round_trips = commands["evalsha"] + commands["blmove"]
    assert round_trips <= 60 * (2 + 3 * (stores - 1)) + 10, commands
    assert sum(commands.values()) <= 8 * round_trips, commands  # incl. those in Lua


async def test_waiters_of_a_process_are_served_in_arrival_order(
    make_store: StoreFactory, clock: Clock
) -> None:
    store, login = make_store(clock), Logins(clock)
    served: list[int] = []

    async def one(i: int) -> str:
        token = await store.acquire(login, max_uses=5)
        served.append(i)
        return token

    tokens = await asyncio.gather(*(one(i) for i in range(23)))
    assert served == list(range(23))
    assert tokens == [f"tok-{1 + i // 5}" for i in range(23)]


async def test_a_process_waiting_for_another_ones_login_does_not_poll(
    redis: aioredis.Redis, clock: Clock
) -> None:
    login, started = Logins(clock, delay=1.0), asyncio.Event()

    async def slow_login() -> LoginResult:
        started.set()
        return await login()

    first, second = (RedisTokenStore(redis, prefix="p", clock=clock) for _ in "ab")
    await redis_commands(redis)
    logging_in = asyncio.create_task(first.acquire(slow_login, max_uses=5))
    await started.wait()
    assert await second.acquire(login, max_uses=5) == await logging_in == "tok-1"
    commands = await redis_commands(redis)
    assert login.calls == 1
    # first: reserve-or-lock, store; second: reserve (lock held), one blocking wait
    # woken by the store, reserve. Polling every 20 ms made ~50 for a 1-s login.
    assert commands["evalsha"] <= 4, commands
    assert commands["blmove"] == 1, commands


# --- the login lock outlives the longest login (issue 9) ----------------------------------


async def test_a_slow_login_never_lets_a_second_process_log_in(
    fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    # Each client's login may take connect + read timeout = 70 s. The lock must live at
    # least that long: a fixed 30-s lock let a 31-s login be joined by a second one.
    fake_gptalk.login_delay = 0.5
    lock_ttls: list[int] = []

    async def on_login() -> None:  # the login's answer is in, the lock still held
        lock_ttls.append(await redis.pttl("slow:auth:lock"))

    clients = [
        GPTalkClient(
            base_url=fake_gptalk.url,
            connect_timeout=10,
            read_timeout=60,
            token_store=RedisTokenStore(redis, prefix="slow", connect_timeout=10, read_timeout=60),
            on_login=on_login,
        )
        for _ in "ab"
    ]
    try:
        await asyncio.gather(*(c.complete([{"role": "user", "content": "hi"}]) for c in clients))
    finally:
        for client in clients:
            await client.close()
    assert fake_gptalk.logins == 1
    assert len(lock_ttls) == 1
    assert lock_ttls[0] > (10 + 60) * 1000
    assert fake_gptalk.submits == 2


async def test_a_login_is_cut_off_before_its_lock_expires(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store = RedisTokenStore(redis, prefix="cut", connect_timeout=0.1, read_timeout=0.2)
    assert store.login_timeout < store.lock_timeout
    login = Logins(clock, delay=store.lock_timeout + 1)
    with pytest.raises(APITimeoutError, match="login took longer"):
        await store.acquire(login, max_uses=5)
    assert await redis.exists("cut:auth:lock") == 0  # released for the next attempt
