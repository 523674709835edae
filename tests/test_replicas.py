"""Three ``python -m bot`` replicas in webhook mode on one redis-server, behind a
round-robin sender in the test: like a load balancer, it POSTs each update (with the
secret header) to the next replica, and passes an update that a replica refuses with
503 (draining) or cannot take (down) on to the next one, as nginx does.

Telegram's clock runs twice as fast (``TELEGRAM_TIME_SCALE`` in the bots, ``time_scale``
in the strict fake Bot API) and leases last ``LEASE`` seconds (``JOURNAL_LEASE``), so
each test takes seconds. The replicas start once for the module; the tests that kill
or restart one bring it back. Every test prints what it measured (the README's
"Scaling out" quotes the figures).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from bot.delivery.render import render
from bot.i18n.en import EN
from tests.bot_process import start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import Call, FakeTelegram
from tests.webhook_process import PATH, SECRET, free_port, get, metric, wait_ready, webhook_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCALE = 0.5  # real seconds per Telegram second
LEASE = 2.0  # JOURNAL_LEASE: a silent replica's answers and places lapse after it
PREFIX = "replicas"  # REDIS_PREFIX
BOT = "@gptalk_test_bot"  # the fake's bot username
INTERRUPTED = render(EN.interrupted_restart).text
RATED = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})  # Telegram counts these

Json = dict[str, Any]


# --- the replicas and the balancer -------------------------------------------------------------


@dataclass
class Replica:
    number: int  # 1, 2, 3: REPLICA_ID replica-<number>
    port: int
    log: Path
    health_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class Cluster:
    tg: FakeTelegram
    gptalk: FakeGPTalk
    redis_url: str
    workdir: Path
    http: aiohttp.ClientSession
    replicas: list[Replica] = field(default_factory=list)
    # Where Telegram would POST: nobody listens there, the test balances instead.
    public: str = field(default_factory=lambda: f"http://127.0.0.1:{free_port()}{PATH}")
    passed_on: int = 0  # updates a replica refused (503) or could not take, sent to the next
    _next: int = 0

    def env(self, replica: Replica) -> dict[str, str]:
        return webhook_env(
            self.tg,
            self.gptalk,
            replica.port,
            health_port=replica.health_port,
            url=self.public,
            REDIS_URL=self.redis_url,
            REDIS_PREFIX=PREFIX,
            REPLICA_ID=f"replica-{replica.number}",
            TELEGRAM_TIME_SCALE=str(SCALE),
            JOURNAL_LEASE=str(LEASE),
            SHUTDOWN_TIMEOUT="20",
        )

    async def start(self, replica: Replica) -> None:
        with replica.log.open("ab") as log:
            replica.proc = await start_bot(
                self.env(replica), self.workdir, stdout=asyncio.subprocess.DEVNULL, stderr=log
            )

    async def up(self) -> None:
        """Every replica running and ready."""
        for replica in self.replicas:
            if not replica.running:
                await self.start(replica)
        for replica in self.replicas:
            await wait_ready(self.http, replica.health_port, timeout=90)

    async def stop(self, replica: Replica) -> float:
        """SIGTERM, and the seconds it took to drain and exit."""
        assert replica.proc is not None
        started = time.monotonic()
        replica.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(replica.proc.wait(), 60) == 0, self.log_of(replica)
        return time.monotonic() - started

    async def kill(self, replica: Replica) -> None:
        assert replica.proc is not None
        replica.proc.kill()
        await replica.proc.wait()

    async def close(self) -> None:
        for replica in self.replicas:
            if replica.running:
                assert replica.proc is not None
                replica.proc.kill()
                await replica.proc.wait()

    def log_of(self, replica: Replica) -> str:
        return replica.log.read_text(errors="replace")

    async def post(self, replica: Replica, update: Json) -> int:
        url = f"http://127.0.0.1:{replica.port}{PATH}"
        try:
            status, _ = await self.tg.post_update(update, url, SECRET)
        except (aiohttp.ClientError, OSError):
            return 0
        return status

    async def send(self, update: Json) -> Replica:
        """To the next replica; one that refuses passes it on (Telegram, too, would
        redeliver an update nobody took, a moment later)."""
        for attempt in range(100):
            replica = self.replicas[self._next % len(self.replicas)]
            self._next += 1
            status = await self.post(replica, update)
            if status == 200:
                return replica
            assert status in (0, 503), status
            self.passed_on += 1
            if attempt % len(self.replicas) == len(self.replicas) - 1:
                await asyncio.sleep(0.2)
        raise AssertionError(f"no replica took update {update['update_id']}")

    async def send_all(self, updates: Iterable[Json]) -> list[Replica]:
        """All at once, each to the next replica, as Telegram delivers them: the chats'
        updates at the same time, one chat's one after another (telegram-bot-api queues
        a chat's updates and sends the next when the previous one was answered)."""
        updates = list(updates)
        took: dict[int, Replica] = {}
        chats: dict[int, list[Json]] = {}
        for update in updates:
            chats.setdefault(chat_of(update), []).append(update)

        async def in_turn(queue: list[Json]) -> None:
            for update in queue:
                took[update["update_id"]] = await self.send(update)

        await asyncio.gather(*(in_turn(queue) for queue in chats.values()))
        return [took[update["update_id"]] for update in updates]

    async def metrics(self, replica: Replica) -> str:
        return (await get(self.http, replica.health_port, "/metrics"))[1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(time_scale=SCALE) as fake:
        fake.deliver = False  # the test is the load balancer
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gptalk() -> AsyncIterator[FakeGPTalk]:
    async with FakeGPTalk() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    tg: FakeTelegram, gptalk: FakeGPTalk, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()  # update claims of other tests' fakes, which number from 1 too
    await client.aclose()
    # The fake Bot API stamps a call when this process's event loop gets to it: a full
    # garbage collection here (0.15-0.3 s with everything the tests import) would
    # bunch calls that reached it apart, and the strict fake would answer 429 where
    # Telegram would not. What exists now is never collected while the replicas run.
    gc.collect()
    gc.freeze()
    workdir = tmp_path_factory.mktemp("replicas")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        cluster = Cluster(tg, gptalk, redis_url, workdir, http)
        cluster.replicas = [
            Replica(n, free_port(), workdir / f"replica-{n}.log") for n in (1, 2, 3)
        ]
        try:
            await cluster.up()
            yield cluster
        finally:
            await cluster.close()
            gc.unfreeze()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def all_up(cluster: Cluster) -> None:
    """A test that killed or stopped a replica may have left it down."""
    await cluster.up()


@pytest.fixture
def gptalk_reset(gptalk: FakeGPTalk) -> FakeGPTalk:
    gptalk.reply, gptalk.hold = None, None
    gptalk.chunk_size, gptalk.delay = 8, 0.0
    gptalk.reset_counters()
    return gptalk


@pytest_asyncio.fixture(loop_scope="module")
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the replicas' Redis, never flushed while they run."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def chat_of(update: Json) -> int:
    """Telegram's delivery queue of an update: its chat's (others go one by one)."""
    message = update.get("message") or update.get("edited_message") or {}
    return int(message["chat"]["id"]) if message else -update["update_id"]


# --- what Telegram saw ---------------------------------------------------------------------------


def last_turn(prompt: str) -> str:
    """The last user turn of a prompt as GPTalk receives it."""
    return prompt.removesuffix("\nAssistant:").rsplit("\nUser: ", 1)[-1].removeprefix("User: ")


def rated_calls(tg: FakeTelegram, since: int = 0) -> list[Call]:
    return [c for c in tg.calls[since:] if c.ok and c.method in RATED]


def too_many(tg: FakeTelegram, since: int = 0) -> int:
    return sum(c.error_code == 429 for c in tg.calls[since:])


def busiest(calls: list[Call], window: float) -> int:
    """Most of ``calls`` within any ``window`` Telegram seconds."""
    times = sorted(c.at for c in calls)
    return max((sum(t <= u < t + window for u in times) for t in times), default=0)


def answer_span(tg: FakeTelegram, chat_id: int, question: int) -> tuple[float, float]:
    """Telegram seconds of an answer's first message and of its last send or edit."""
    ids = {m.message_id for m in tg.bot_messages(chat_id) if m.reply_to == question}
    calls = [c for c in tg.calls if c.ok and c.params.get("chat_id") == chat_id]
    first = min(
        c.at
        for c in calls
        if c.method == "sendMessage"
        and (c.params.get("reply_parameters") or {}).get("message_id") == question
    )
    last = max(
        (c.at for c in calls if c.method == "editMessageText" and c.params["message_id"] in ids),
        default=first,
    )
    return first, last


def mentioning(tg: FakeTelegram, chat: Json, user: Json, text: str) -> Json:
    index = text.index(BOT)
    mention = {"type": "mention", "offset": index, "length": len(BOT)}
    return tg.user_message(chat, user, text, entities=[mention])


def poem(prompt: str) -> str:
    """A few seconds of streaming, different for every question."""
    about = last_turn(prompt)
    lines = "\n".join(f"Line {i}: _{about}_, slowly." for i in range(1, 9))
    return f"**A poem about {about}**\n\n{lines}"


async def complete(
    tg: FakeTelegram,
    questions: list[tuple[int, int, str]],
    answer: Callable[[str], str],
    timeout: float,  # noqa: ASYNC109
) -> float:
    """Wait until every (chat, message id, prompt) shows its complete answer; seconds.

    Rendered once, checked every 50 ms: the fakes share this process's event loop,
    and a busy loop here would delay the fake Bot API's clock (it stamps a call when
    it gets to it), bunching calls that arrived apart."""
    started = time.monotonic()
    expected = [(chat, message, render(answer(prompt)).text) for chat, message, prompt in questions]
    wrong = expected
    deadline = started + timeout
    while wrong and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        wrong = [(c, m, text) for c, m, text in wrong if tg.visible_text(c, m) != text]
    if wrong:
        shown = [(c, m, tg.visible_text(c, m)[:120]) for c, m, _ in wrong[:5]]
        raise AssertionError(f"{len(wrong)} answer(s) incomplete: {shown}")
    return time.monotonic() - started


# --- the tests ---------------------------------------------------------------------------------


async def test_five_askers_in_one_group_spread_over_replicas(
    cluster: Cluster, tg: FakeTelegram, gptalk_reset: FakeGPTalk
) -> None:
    gptalk = gptalk_reset
    gptalk.reply, gptalk.chunk_size, gptalk.delay = poem, 12, 0.07  # ~2 s an answer
    group = tg.group_chat(-100500, "Replicas club")
    names = ["Ann", "Bob", "Cid", "Dee", "Eve"]
    mark, started = len(tg.calls), tg.now()
    questions = [
        mentioning(tg, group, tg.add_user(500 + i, name), f"{BOT} {name.lower()}'s garden")
        for i, name in enumerate(names)
    ]
    took = await cluster.send_all(tg.take_updates())
    assert len({replica.number for replica in took}) == 3

    prompts = [
        (group["id"], q["message_id"], f"{n}: {n.lower()}'s garden")
        for q, n in zip(questions, names, strict=True)
    ]
    seconds = await complete(tg, prompts, poem, 60)

    spans = [answer_span(tg, group["id"], q["message_id"]) for q in questions]
    calls = [c for c in rated_calls(tg, mark) if c.params.get("chat_id") == group["id"]]
    print(
        f"\n[group burst over 3 replicas] 5 answers complete in {seconds:.1f} s "
        f"({tg.now() - started:.0f} Telegram s); first messages after "
        f"{sorted(round(s - started, 1) for s, _ in spans)} Telegram s; "
        f"{len(calls)} sends+edits, busiest 60 s: {busiest(calls, 60)}; "
        f"{too_many(tg, mark)} x 429"
    )
    assert too_many(tg, mark) == 0
    assert busiest(calls, 60.0) <= 20  # the group's budget, summed over the replicas
    # All five streamed at once: every answer began before any of them ended.
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    assert sorted(last_turn(p) for p in gptalk.prompts) == sorted(p for _, _, p in prompts)


async def test_one_chats_prompts_on_three_replicas_run_in_order_with_history(
    cluster: Cluster, tg: FakeTelegram, gptalk_reset: FakeGPTalk
) -> None:
    gptalk = gptalk_reset
    gptalk.reply, gptalk.chunk_size, gptalk.delay = poem, 12, 0.05  # ~1.5 s an answer
    uid = 600
    user = tg.add_user(uid, "Ann")
    chat = tg.private_chat(user)
    before = [
        metric(await cluster.metrics(r), "gptalk_bot_prompts_total") for r in cluster.replicas
    ]
    mark = len(tg.calls)
    questions = [tg.user_message(chat, user, f"question {n}") for n in (1, 2, 3)]
    took = await cluster.send_all(tg.take_updates())
    assert len({replica.number for replica in took}) == 3

    prompts = [(uid, q["message_id"], q["text"]) for q in questions]
    seconds = await complete(tg, prompts, poem, 60)

    after = [metric(await cluster.metrics(r), "gptalk_bot_prompts_total") for r in cluster.replicas]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    spans = [answer_span(tg, uid, q["message_id"]) for q in questions]
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    print(
        f"\n[one chat, 3 prompts on 3 replicas] complete in {seconds:.1f} s; each next answer "
        f"began {[round(g * SCALE, 2) for g in gaps]} s after the previous one ended; "
        f"{too_many(tg, mark)} x 429"
    )
    assert too_many(tg, mark) == 0
    assert all(gap >= 0 for gap in gaps)  # one at a time, in message id order
    first, second, third = gptalk.prompts
    answers = [poem(q["text"]) for q in questions]
    assert first == "question 1"
    assert second == f"User: question 1\nAssistant: {answers[0]}\nUser: question 2\nAssistant:"
    assert third == (
        f"User: question 1\nAssistant: {answers[0]}\n"
        f"User: question 2\nAssistant: {answers[1]}\nUser: question 3\nAssistant:"
    )


async def test_sixty_chats_at_once_over_replicas_without_a_429(
    cluster: Cluster, tg: FakeTelegram, gptalk_reset: FakeGPTalk
) -> None:
    gptalk = gptalk_reset
    gptalk.chunk_size, gptalk.delay = 8, 0.03  # the default answer in ~0.7 s
    base, mark, started = 7000, len(tg.calls), tg.now()
    questions = []
    for n in range(60):
        user = tg.add_user(base + n, f"User{n}")
        questions.append(tg.user_message(tg.private_chat(user), user, f"hello {n}"))
    took = await cluster.send_all(tg.take_updates())
    assert sorted(sum(r is replica for r in took) for replica in cluster.replicas) == [20, 20, 20]

    prompts = [(base + n, q["message_id"], q["text"]) for n, q in enumerate(questions)]
    seconds = await complete(tg, prompts, lambda _: gptalk.answer, 90)

    calls = rated_calls(tg, mark)
    firsts = [answer_span(tg, base + n, q["message_id"])[0] for n, q in enumerate(questions)]
    print(
        f"\n[60 chats over 3 replicas] all complete in {seconds:.1f} s "
        f"({tg.now() - started:.1f} Telegram s), last first message after "
        f"{max(firsts) - started:.1f} Telegram s; {len(calls)} sends+edits, busiest "
        f"Telegram second: {busiest(calls, 1.0)}; {too_many(tg, mark)} x 429 "
        f"({tg.too_many_requests} in the module so far)"
    )
    assert tg.too_many_requests == 0  # in the whole module
    assert busiest(rated_calls(tg), 1.0) <= 30
    assert sorted(gptalk.prompts) == sorted(q["text"] for q in questions)


def story_or_not(prompt: str) -> str:
    """A long story (tens of seconds) for a story, a short answer otherwise."""
    question = last_turn(prompt)
    if "story" in question:
        return "A **long** story. " + "word " * 300
    return f"Short answer to {question}."


async def journaled(redis: aioredis.Redis, text: str) -> bool:
    """Whether the journal holds an answer showing ``text`` (it lags the screen)."""
    for answer in await redis.smembers(f"{PREFIX}:journal"):
        name = answer.decode() if isinstance(answer, bytes) else answer
        entry = await redis.hget(f"{PREFIX}:journal:{name}", "entry")
        if entry is not None and json.loads(entry)["text"] == text:
            return True
    return False


async def waiting_in_line(redis: aioredis.Redis, chat_id: int, count: int = 1) -> None:
    for _ in range(500):
        if await redis.zcard(f"{PREFIX}:line:{chat_id}:waiting") == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {count} waiting in chat {chat_id}'s line")


async def test_a_replica_killed_mid_answer_is_swept_and_its_lease_passes_on(
    cluster: Cluster, tg: FakeTelegram, gptalk_reset: FakeGPTalk, redis: aioredis.Redis
) -> None:
    gptalk = gptalk_reset
    gptalk.reply, gptalk.chunk_size, gptalk.delay = story_or_not, 10, 0.1  # the story: ~15 s
    mark = len(tg.calls)
    user = tg.add_user(800, "Kim")
    chat = tg.private_chat(user)
    tg.user_message(chat, user, "tell me a story")
    [victim] = await cluster.send_all(tg.take_updates())
    await tg.wait_for(lambda: any(m.edits for m in tg.bot_messages(800)), 30)
    [message] = tg.bot_messages(800)
    for _ in range(200):
        if await journaled(redis, message.text):
            break
        await asyncio.sleep(0.02)
    follow_up = tg.user_message(chat, user, "and then?")
    [waiter] = await cluster.send_all(tg.take_updates())
    assert waiter is not victim
    await waiting_in_line(redis, 800)  # behind the story

    cut = message.text
    await cluster.kill(victim)
    killed = time.monotonic()
    await tg.wait_for(lambda: message.text.endswith(INTERRUPTED), 60)
    marked = time.monotonic()
    expected = render(story_or_not("and then?")).text
    await tg.wait_for(lambda: tg.visible_text(800, follow_up["message_id"]) == expected, 30)
    [(asked, content)] = [
        (r, r.json["content"]) for r in gptalk.requests_to("submit") if r.json is not None
    ][-1:]
    assert content.endswith("User: and then?\nAssistant:")
    sweepers = [
        r.number for r in cluster.replicas if "ending an answer in chat 800" in cluster.log_of(r)
    ]
    knows = "A **long** story." in content
    print(
        f"\n[kill -9 mid-answer, lease {LEASE} s] interrupted marker {marked - killed:.2f} s "
        f"after the kill (swept by replica {sweepers}); the prompt waiting on replica "
        f"{waiter.number} started {asked.at - killed:.2f} s after the kill; its history "
        f"{'has' if knows else 'lacks'} the interrupted answer; {too_many(tg, mark)} x 429"
    )
    assert message.text == f"{cut}\n\n{INTERRUPTED}"
    assert sweepers
    assert victim.number not in sweepers
    assert marked - killed < LEASE * 5  # a lease, a sweep, and a loaded machine's delays
    assert asked.at > killed  # it waited for the killed answer's lease to lapse
    assert too_many(tg, mark) == 0
    # However the sweep and the next prompt raced, the interrupted answer is in the
    # history right after its question, for every later prompt to see.
    for _ in range(250):
        raw = await redis.lrange(f"{PREFIX}:history:800", 0, -1)  # type: ignore[misc]
        turns = [json.loads(t) for t in raw]
        if len(turns) == 4:
            break
        await asyncio.sleep(0.02)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["content"] == "tell me a story"
    assert turns[1]["content"].endswith(EN.interrupted_restart)
    assert turns[2]["content"] == "and then?"


def handed_back(cluster: Cluster) -> tuple[int, int]:
    """Prompts the replicas handed back while stopping, and prompts they took over."""
    logs = [cluster.log_of(replica) for replica in cluster.replicas]
    gave = sum(int(n) for log in logs for n in re.findall(r"handed back (\d+) waiting", log))
    took = sum(log.count("for a replica that stopped") for log in logs)
    return gave, took


async def test_a_rolling_restart_under_load_loses_no_prompt(
    cluster: Cluster, tg: FakeTelegram, gptalk_reset: FakeGPTalk, redis: aioredis.Redis
) -> None:
    gptalk = gptalk_reset
    gptalk.reply, gptalk.chunk_size, gptalk.delay = poem, 12, 0.05  # ~1.5 s an answer
    mark, passed_on, (gave, took) = len(tg.calls), cluster.passed_on, handed_back(cluster)
    questions: list[tuple[int, int, str]] = []
    sending: list[asyncio.Task[list[Replica]]] = []
    users = (tg.add_user(9000 + n, f"User{n}") for n in range(1000))

    def ask(user: Json, *texts: str) -> list[Json]:
        chat = tg.private_chat(user)
        asked = [tg.user_message(chat, user, text) for text in texts]
        questions.extend((user["id"], q["message_id"], q["text"]) for q in asked)
        return asked

    async def feed(stop: asyncio.Event) -> None:
        """A new chat every 0.3 s, round-robin; every third one sends a follow-up at once."""
        n = 0
        while not stop.is_set():
            user = next(users)
            ask(user, *[f"{user['first_name']} asks {k}" for k in range(1 + (n % 3 == 2))])
            sending.append(asyncio.create_task(cluster.send_all(tg.take_updates())))
            n += 1
            await asyncio.sleep(0.3)

    async def park_a_follow_up(on: Replica) -> Json:
        """A chat whose follow-up waits in line on ``on`` (its first prompt runs elsewhere)."""
        user = next(users)
        elsewhere = next(r for r in cluster.replicas if r is not on and r.running)
        [_, then] = ask(user, f"{user['first_name']} first", f"{user['first_name']} then")
        first_update, then_update = tg.take_updates()  # no await since the feeder's: ours only
        assert await cluster.post(elsewhere, first_update) == 200
        assert await cluster.post(on, then_update) == 200
        await waiting_in_line(redis, user["id"])
        return then

    stop = asyncio.Event()
    feeder = asyncio.create_task(feed(stop))
    drains, starts, parked = [], [], []
    began = time.monotonic()
    try:
        await asyncio.sleep(1.0)
        for replica in cluster.replicas:
            parked.append(await park_a_follow_up(replica))
            drains.append(await cluster.stop(replica))
            restarted = time.monotonic()
            await cluster.up()
            starts.append(time.monotonic() - restarted)
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await feeder
    await asyncio.gather(*sending)
    rolled = time.monotonic() - began
    seconds = await complete(tg, questions, poem, 60)
    gave, took = (n - before for n, before in zip(handed_back(cluster), (gave, took), strict=True))
    print(
        f"\n[rolling restart under load] {len(questions)} prompts in {rolled:.1f} s while the 3 "
        f"replicas restarted one by one (drain {[round(d, 1) for d in drains]} s, start "
        f"{[round(s, 1) for s in starts]} s); {cluster.passed_on - passed_on} deliveries passed "
        f"on by a stopped or draining replica; {gave} waiting prompt(s) handed back, {took} "
        f"taken over; all answered {seconds:.1f} s after the last restart; "
        f"{too_many(tg, mark)} x 429"
    )
    assert too_many(tg, mark) == 0
    assert cluster.passed_on > passed_on  # the balancer did meet a stopped replica
    assert gave == took >= len(parked)
    for then in parked:  # answered by another replica, after and knowing the first answer
        first = f"{then['from']['first_name']} first"
        [prompt] = [p for p in gptalk.prompts if p.endswith(f"User: {then['text']}\nAssistant:")]
        assert prompt.startswith(f"User: {first}\nAssistant: {poem(first)}\n")
