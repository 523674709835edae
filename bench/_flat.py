"""Flat cost: N conversations streaming at once, the bot's CPU per streamed chunk.

The real bot (``tests/bot_harness.py``: production factory, aiogram polling; with Redis,
or with ``redis_url=None`` the in-process budgets and stores) against the strict
``FakeTelegram`` in real time; the fake GPTalk runs in a child process
(``bench/_gptalk_server.py``) so that this process's CPU time is the bot's (plus the fake
Bot API, whose work is bounded by the 30 calls/s it accepts). Each answer is streamed in
``step``-character lines every ``delay`` seconds (defaults: 8 characters every 50 ms).

For comparison, the same answers can be delivered by two naive editors that popular
bots use, against the same fake Bot API (they live here, not in ``bot/``):

* ``char-delta``: edit after every ``--naive-chars`` new characters;
* ``interval``: edit every ``--naive-interval`` seconds, awaiting each call in the
  stream's loop, without coalescing across chats or priorities; a 429 is waited out
  (``retry_after``) and the same call retried.

and the bot itself with ``STREAM_MODE=draft`` (strategy ``draft``: the answer grows in
``sendMessageDraft`` calls, which count against the same limits, and ends as a message).

Used by ``python -m bench.bench_load --sweep 100,200,500,1000`` and ``bench/plots.py``.
Everything is recorded as JSON-ready dicts (``FlatRun.to_json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramRetryAfter
from aiogram.types import TelegramObject, Update
from aiohttp import web

import gptalk.client as gptalk_client
from bench._common import answer_for, percentile, process_cpu_seconds
from bot.delivery.render import render, split
from gptalk import GPTalkClient, MemoryTokenStore
from tests.bot_harness import BotHarness, UpdateTracker
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

USER_ID_BASE = 100_000
TELEGRAM_RATE = 30.0  # calls per second bot-wide: the physical limit of every strategy
NAIVE = ("char-delta", "interval")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def gptalk_server(chars: int, step: int, delay: float) -> Iterator[tuple[str, int]]:
    """A fake GPTalk in a child process; yields its URL and pid."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench._gptalk_server",
            "--chars",
            str(chars),
            "--step",
            str(step),
            "--delay",
            str(delay),
            "--per-question",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the fake GPTalk did not start (got {url!r})")
        yield url, server.pid
    finally:
        assert server.stdin is not None
        server.stdin.close()  # it exits when its stdin closes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


class StreamWatch:
    """Counts the deltas every answer stream yields and when (this process only: wraps
    ``gptalk.client.AnswerStream.__anext__``)."""

    def __init__(self) -> None:
        self.chunks = 0
        self.spans: dict[int, list[float]] = {}  # id(stream) → [first, last] monotonic

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        cls = gptalk_client.AnswerStream
        original = cls.__anext__
        watch = self

        async def counted(stream: Any) -> str:
            delta = await original(stream)
            now = time.monotonic()
            watch.chunks += 1
            span = watch.spans.setdefault(id(stream), [now, now])
            span[1] = now
            return delta

        cls.__anext__ = counted  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            cls.__anext__ = original  # type: ignore[method-assign]


class LagSampler:
    """Event-loop lag as the bot's probe measures it: a 0.1 s timer's delay; and the
    process's CPU time less ``not_ours()`` (the fake Bot API's handler)."""

    def __init__(self, interval: float = 0.1, not_ours: Callable[[], float] = lambda: 0.0) -> None:
        self.interval = interval
        self.not_ours = not_ours
        self.samples: list[tuple[float, float]] = []  # (monotonic, delay)
        self.cpu: list[tuple[float, float]] = []  # (monotonic, CPU s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append((time.monotonic(), max(0.0, loop.time() - due)))
            self.cpu.append((time.monotonic(), _cpu_s() - self.not_ours()))


class StrictTelegram(FakeTelegram):
    """The strict fake Bot API, also noting which limit each 429 hit: ``bot-wide`` (30
    calls arrived in the last second) or ``chat`` (the chat's own budget), and the CPU
    time its request handler spends, so that the bot's own CPU can be told apart.

    ``handler_cpu_s`` counts every call but the long poll (which waits for updates) from
    the handler's start to its response: reading the parameters, the limits, building
    the reply. The fake's other work (aiohttp parsing the request and writing the
    response) stays in the process's figure, so the bot's share is overstated, not
    understated. Besides the long poll, the handler only waits for the request's body,
    which for calls this small arrives with the headers, so little or no other task's
    CPU falls into it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.too_many_by: Counter[str] = Counter()
        self.handler_cpu_s = 0.0

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["method"].lower() == "getupdates":
            return await super()._handle(request)
        start = time.thread_time()
        try:
            return await super()._handle(request)
        finally:
            self.handler_cpu_s += time.thread_time() - start

    def _rate_check(self, chat_id: int) -> None:
        before = self.too_many_requests
        bot_wide = self.enforce_limits and self._global_window.wait(self.now()) > 0
        try:
            super()._rate_check(chat_id)
        finally:
            if self.too_many_requests > before:
                self.too_many_by["bot-wide" if bot_wide else "chat"] += 1


def busiest_second(calls: list[tuple[float, str, int]]) -> int:
    """The most successful send/edit/draft calls that arrived within one second."""
    times = sorted(t for t, _m, status in calls if status == 200)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


class BudgetEvents(logging.Handler):
    """The Redis budgets' warnings (``Redis failed …``: this process's budgets take
    over) and recoveries, with the fake Bot API's time, to set beside its 429s."""

    LOGGER = "bot.delivery.redis_budgets"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(logging.INFO)
        self.clock = clock
        self.events: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((self.clock(), record.getMessage()))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        logger = logging.getLogger(self.LOGGER)
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


class TimedTracker(UpdateTracker):
    """The harness's tracker, also noting when each update was fully handled."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.finished_at: dict[int, float] = {}
        self._clock = clock

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        try:
            return await super().__call__(handler, event, data)
        finally:
            if isinstance(event, Update):
                self.finished_at[event.update_id] = self._clock()


@dataclass
class FlatRun:
    strategy: str
    n: int
    answer_chars: int
    step: int
    delay: float
    finished: bool
    wall_s: float
    cpu_s: float  # this process: the bot (or naive editors) + the fake Bot API
    server_cpu_s: float  # the fake GPTalk's process
    chunks: int
    complete: int
    correct: int
    too_many: int
    first: list[float]  # per answer: message queued → first visible message, s
    final: list[float]  # per answer: message queued → last successful send/edit, s
    lag: list[float]  # event-loop lag samples, s
    stretch: list[float]  # per stream: read duration − the server's nominal duration, s
    stream_cpu_share: float  # the bot's CPU s / wall s while streams were being read
    calls: list[tuple[float, str, int]] = field(default_factory=list)  # (t, method, status)
    backend: str = "redis"  # the bot's budgets and stores ("memory": in-process); naive: ""
    too_many_by: dict[str, int] = field(default_factory=dict)  # 429s by the limit they hit
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, budgets' log line)
    # Of cpu_s, the fake Bot API's request handler (StrictTelegram.handler_cpu_s); runs
    # recorded before it was measured have 0 here.
    fake_cpu_s: float = 0.0
    round_no: int = 0  # which round of a --repeat sweep

    @property
    def label(self) -> str:
        if self.strategy == "bot":
            return f"bot, {self.backend}"
        if self.strategy == "draft":
            return f"bot drafts, {self.backend}"
        return self.strategy

    @property
    def us_per_chunk(self) -> float:
        """The bot's CPU per streamed chunk: this process without the fake's handler."""
        return (self.cpu_s - self.fake_cpu_s) / max(1, self.chunks) * 1e6

    @property
    def process_us_per_chunk(self) -> float:
        """This process's CPU per streamed chunk, the fake Bot API's handler included."""
        return self.cpu_s / max(1, self.chunks) * 1e6

    def to_json(self) -> dict[str, Any]:
        # Samples to 0.1 ms: the data files are committed, and the clocks are no finer.
        return {
            key: [round(v, 4) for v in value]
            if isinstance(value, list) and value and isinstance(value[0], float)
            else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlatRun:
        data = dict(data)
        data["calls"] = [tuple(c) for c in data.get("calls", [])]
        return cls(**data)


def _status(call: Any) -> int:
    if call.ok:
        return 200
    return 429 if str(call.description).startswith("Too Many Requests") else 400


MESSAGE_CALLS = ("sendMessage", "editMessageText", "sendMessageDraft")


def _calls(tg: FakeTelegram, t0: float) -> list[tuple[float, str, int]]:
    # Call.at is FakeTelegram.now() (real time at time_scale 1), t0 the same clock.
    return [
        (round(c.at - t0, 4), c.method, _status(c)) for c in tg.calls if c.method in MESSAGE_CALLS
    ]


def _stream_share(sampler: LagSampler, watch: StreamWatch) -> float:
    """The bot's CPU (the sampler's) over wall time between the first and the last chunk read."""
    if not watch.spans or len(sampler.cpu) < 2:
        return float("nan")
    start = min(s[0] for s in watch.spans.values())
    end = max(s[1] for s in watch.spans.values())
    inside = [(t, c) for t, c in sampler.cpu if start <= t <= end]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _stretch(watch: StreamWatch, nominal: float) -> list[float]:
    return [max(0.0, (last - first) - nominal) for first, last in watch.spans.values()]


async def run_bot(
    n: int, *, url: str, server_pid: int, redis_url: str | None, chars: int, step: int,
    delay: float, timeout: float,  # noqa: ASYNC109 — a budget for the whole run
    stream_mode: str = "edit", round_: int = 0,
) -> FlatRun:  # fmt: skip
    """The bot at N; ``redis_url=None``: in-process budgets and stores; ``stream_mode``
    ``"draft"``: private answers stream as drafts."""
    lines = -(-chars // step)
    tg = StrictTelegram()
    await tg.start()
    remote = cast(FakeGPTalk, type("RemoteGPTalk", (), {"url": url})())
    # Only set when wanted: older trees measured with ``--before-tree`` have no drafts.
    modes: dict[str, Any] = {"stream_mode": stream_mode} if stream_mode != "edit" else {}
    harness = BotHarness(tg, remote, redis_url=redis_url, **modes)
    tracker = TimedTracker()
    harness.tracker = tracker
    sampler, watch = LagSampler(not_ours=lambda: tg.handler_cpu_s), StreamWatch()
    events = BudgetEvents(tg.now)
    try:
        await harness.start()
        # As `python -m bot` does once the application is built (bot/__main__.py):
        # without it, full collections of the import-time heap stall the loop.
        gc.collect()
        gc.freeze()
        users = [harness.user(USER_ID_BASE + i, f"U{i}") for i in range(n)]
        started: dict[int, float] = {}
        update_of: dict[int, int] = {}
        chat_of: dict[int, int] = {}
        sampling = asyncio.create_task(sampler.run())
        with watch.watching(), events.watching():
            cpu0, server0, wall0 = _cpu_s(), process_cpu_seconds(server_pid), time.monotonic()
            fake0 = tg.handler_cpu_s
            t0 = tg.now()
            for i, user in enumerate(users):
                started[i] = tg.now()
                message = harness.say(user, f"bench question {i:04d}")
                update_of[i] = int(tg.pending_updates[-1]["update_id"])
                chat_of[i] = message["chat"]["id"]
            finished, deadline = True, time.monotonic() + timeout
            wanted = set(update_of.values())
            while not wanted <= tracker.done:
                if time.monotonic() > deadline:
                    finished = False
                    break
                await asyncio.sleep(0.05)
            wall_s, cpu_s = time.monotonic() - wall0, _cpu_s() - cpu0
            server_cpu_s = process_cpu_seconds(server_pid) - server0
            fake_cpu_s = tg.handler_cpu_s - fake0
        sampling.cancel()
        firsts: dict[int, float] = {}  # the first message or draft the user sees
        finals: dict[int, float] = {}  # the last message or edit (a draft is never final)
        for call in tg.calls:
            if call.ok and call.method in MESSAGE_CALLS:
                chat = call.params["chat_id"]
                if call.method != "editMessageText":
                    firsts.setdefault(chat, call.at)
                if call.method != "sendMessageDraft":
                    finals[chat] = call.at
        correct = 0
        for i in range(n):
            expected = "".join(p.text for p in split(render(answer_for(i, chars))))
            correct += "".join(m.text for m in tg.bot_messages(chat_of[i])) == expected
        return FlatRun(
            strategy="draft" if stream_mode == "draft" else "bot",
            n=n,
            answer_chars=chars,
            step=step,
            delay=delay,
            finished=finished,
            wall_s=wall_s,
            cpu_s=cpu_s,
            server_cpu_s=server_cpu_s,
            chunks=watch.chunks,
            complete=sum(1 for i in range(n) if update_of[i] in tracker.done),
            correct=correct,
            too_many=tg.too_many_requests,
            first=[firsts[chat_of[i]] - started[i] for i in range(n) if chat_of[i] in firsts],
            final=[finals[chat_of[i]] - started[i] for i in range(n) if chat_of[i] in finals],
            lag=[d for _, d in sampler.samples],
            stretch=_stretch(watch, (lines - 1) * delay),
            stream_cpu_share=_stream_share(sampler, watch),
            calls=_calls(tg, t0),
            backend="redis" if redis_url else "memory",
            too_many_by=dict(tg.too_many_by),
            events=[(round(t - t0, 3), line) for t, line in events.events],
            fake_cpu_s=fake_cpu_s,
            round_no=round_,
        )
    finally:
        gc.unfreeze()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(harness.stop(), 120)
        await tg.close()


# ------------------------------------------------------------------ naive editors


class NaiveEditor:
    """One answer delivered the way many bots do it: send, then edit inside the stream's
    loop whenever ``due()`` says so; a 429 is slept off and the same call retried."""

    def __init__(self, bot: Bot, chat_id: int, due: Callable[[int, float], bool]) -> None:
        self.bot, self.chat_id, self.due = bot, chat_id, due
        self.message_id: int | None = None
        self.shown = ""

    async def _call(self, text: str) -> None:
        content = render(text)
        while True:
            try:
                if self.message_id is None:
                    sent = await self.bot.send_message(
                        self.chat_id, content.text, entities=content.aiogram_entities()
                    )
                    self.message_id = sent.message_id
                else:
                    await self.bot.edit_message_text(
                        text=content.text,
                        chat_id=self.chat_id,
                        message_id=self.message_id,
                        entities=content.aiogram_entities(),
                    )
                self.shown = text
                return
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)

    async def run(self, deltas: AsyncIterator[str]) -> None:
        text, last_at = "", time.monotonic()
        async for delta in deltas:
            text += delta
            first = self.message_id is None and bool(text.strip())
            if first or self.due(len(text) - len(self.shown), time.monotonic() - last_at):
                await self._call(text)
                last_at = time.monotonic()
        if text != self.shown:
            await self._call(text)


async def run_naive(
    strategy: str, n: int, *, url: str, server_pid: int, chars: int, step: int,
    delay: float, timeout: float,  # noqa: ASYNC109 — a budget for the whole run
    every_chars: int = 100, every_s: float = 1.0, round_: int = 0,
) -> FlatRun:  # fmt: skip
    def due(new_chars: int, since: float) -> bool:
        if strategy == "char-delta":
            return new_chars >= every_chars
        return since >= every_s

    lines = -(-chars // step)
    tg = StrictTelegram()
    sampler, watch = LagSampler(not_ours=lambda: tg.handler_cpu_s), StreamWatch()
    async with tg:
        bot = Bot(tg.token, session=AiohttpSession(api=TelegramAPIServer.from_base(tg.url)))
        client = GPTalkClient(base_url=url, token_store=MemoryTokenStore(), max_uses=5)
        chats = [tg.private_chat(tg.add_user(USER_ID_BASE + i, f"U{i}"))["id"] for i in range(n)]
        sampling = asyncio.create_task(sampler.run())
        try:
            with watch.watching():
                cpu0, server0, wall0 = _cpu_s(), process_cpu_seconds(server_pid), time.monotonic()
                fake0 = tg.handler_cpu_s
                t0 = tg.now()
                editors = [NaiveEditor(bot, chat, due) for chat in chats]

                async def one(i: int) -> None:
                    prompt = [{"role": "user", "content": f"bench question {i:04d}"}]
                    await editors[i].run(client.stream(prompt))  # type: ignore[arg-type]

                tasks = [asyncio.create_task(one(i)) for i in range(n)]
                done, pending = await asyncio.wait(tasks, timeout=timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                wall_s, cpu_s = time.monotonic() - wall0, _cpu_s() - cpu0
                server_cpu_s = process_cpu_seconds(server_pid) - server0
                fake_cpu_s = tg.handler_cpu_s - fake0
        finally:
            sampling.cancel()
            await client.close()
            await bot.session.close()
        firsts: dict[int, float] = {}
        finals: dict[int, float] = {}
        for call in tg.calls:
            if call.ok and call.method in ("sendMessage", "editMessageText"):
                firsts.setdefault(call.params["chat_id"], call.at)
                finals[call.params["chat_id"]] = call.at
        ok = [t for t in done if not t.cancelled() and t.exception() is None]
        return FlatRun(
            strategy=strategy,
            n=n,
            answer_chars=chars,
            step=step,
            delay=delay,
            finished=not pending,
            wall_s=wall_s,
            cpu_s=cpu_s,
            server_cpu_s=server_cpu_s,
            chunks=watch.chunks,
            complete=len(ok),
            correct=sum(
                1 for i, e in enumerate(editors) if e.shown == answer_for(i, chars) and e.shown
            ),
            too_many=tg.too_many_requests,
            first=[firsts[c] - t0 for c in chats if c in firsts],
            final=[finals[c] - t0 for c in chats if c in finals],
            lag=[d for _, d in sampler.samples],
            stretch=_stretch(watch, (lines - 1) * delay),
            stream_cpu_share=_stream_share(sampler, watch),
            calls=_calls(tg, t0),
            backend="",
            too_many_by=dict(tg.too_many_by),
            fake_cpu_s=fake_cpu_s,
            round_no=round_,
        )


# ------------------------------------------------------------------ reporting


def summary_rows(runs: list[FlatRun]) -> list[list[object]]:
    def pct(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.2f}"

    rows: list[list[object]] = []
    for r in runs:
        ok = Counter(method for _t, method, status in r.calls if status == 200)
        rows.append(
            [
                r.label,
                r.n,
                f"{r.complete}/{r.n}",
                f"{r.correct}/{r.n}",
                r.too_many,
                f"{sum(ok.values())} ({ok['sendMessageDraft']})",
                f"{r.us_per_chunk:.0f}",
                f"{r.process_us_per_chunk:.0f}",
                f"{r.cpu_s:.1f} ({r.fake_cpu_s:.1f})",
                f"{r.stream_cpu_share:.0%}",
                " / ".join(pct(r.first, q) for q in (50, 95, 100)),
                " / ".join(pct(r.final, q) for q in (50, 95, 100)),
                f"{r.n / TELEGRAM_RATE:.1f}",
                f"{percentile(r.lag, 99) * 1000:.0f} / {percentile(r.lag, 100) * 1000:.0f}",
                " / ".join(pct(r.stretch, q) for q in (50, 95, 100)),
                f"{r.server_cpu_s:.1f}",
            ]
        )
    return rows


COST_HEADERS = ["strategy", "N", "rounds", "bot CPU µs/chunk", "median", "median / N = 100's"]


def median_cost(runs: list[FlatRun]) -> dict[tuple[str, int], float]:
    """The median bot CPU per chunk of each (label, N) over the rounds of a sweep."""
    by: dict[tuple[str, int], list[float]] = {}
    for run in runs:
        by.setdefault((run.label, run.n), []).append(run.us_per_chunk)
    return {key: statistics.median(values) for key, values in by.items()}


def cost_rows(runs: list[FlatRun]) -> list[list[object]]:
    medians = median_cost(runs)
    rows: list[list[object]] = []
    for label, n in medians:
        values = [r.us_per_chunk for r in runs if (r.label, r.n) == (label, n)]
        base = medians.get((label, 100))
        rows.append(
            [
                label,
                n,
                len(values),
                " / ".join(f"{v:.0f}" for v in values),
                f"{medians[label, n]:.0f}",
                f"{medians[label, n] / base:.2f}×" if base else "",
            ]
        )
    return rows


def too_many_story(run: FlatRun) -> str:
    """Where a run's 429s came from: the limit each hit, when, the busiest second at
    the fake, and the budgets' events (a Redis timeout hands over to this process)."""
    limited = [t for t, _m, status in run.calls if status == 429]
    by = ", ".join(f"{count} {limit}" for limit, count in sorted(run.too_many_by.items()))
    span = f"at {min(limited):.1f}–{max(limited):.1f} s" if limited else "none"
    lines = [
        f"{run.too_many} × 429 ({by or 'limit unknown'}) {span}; "
        f"busiest second at the fake: {busiest_second(run.calls)} ok calls"
    ]
    lines += [f"  - {t:.1f} s: {line}" for t, line in run.events]
    return "\n".join(lines)


SUMMARY_HEADERS = [
    "strategy",
    "N",
    "complete",
    "exact",
    "429s",
    "ok calls (drafts)",
    "bot CPU µs/chunk",
    "process CPU µs/chunk",
    "process CPU s (fake Bot API's handler)",
    "bot CPU while streaming (of 1 core)",
    "first visible p50/p95/max s",
    "final edit p50/p95/max s",
    "N/30 s",
    "loop lag p99/max ms",
    "stream behind p50/p95/max s",
    "fake GPTalk CPU s",
]


def dump(runs: list[FlatRun], path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump([r.to_json() for r in runs], out, separators=(",", ":"))


def load(path: str) -> list[FlatRun]:
    with open(path, encoding="utf-8") as source:
        return [FlatRun.from_json(item) for item in json.load(source)]
