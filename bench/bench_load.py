"""N private conversations at once through the real bot.

The bot is built by the production factory (``tests/bot_harness.py``: real aiogram
polling, real aiohttp) against a strict ``FakeTelegram`` in real time, a ``FakeGPTalk``
streaming each answer for ``--stream-seconds``, and a private redis-server this script
starts on a free loopback port and stops at the end. All N users write at once (or
spread over ``--ramp`` seconds); measured from each user's message (``FakeTelegram.now``
when it is queued):

* time to GPTalk submit, time to first visible message (the bot's first successful
  ``sendMessage`` in that chat, by ``Call.at``), time to complete (the update fully
  handled), p50/p95/max;
* send/edit calls, 429s, GPTalk logins, event-loop lag, peak RSS and CPU seconds of
  this process (bot *and* the in-process fakes) and of redis-server.

    .venv/bin/python -m bench.bench_load --conversations 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import itertools
import logging
import pstats
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis as redis_sync
from pydantic._internal import _generics as pydantic_generics

from bench import _flat
from bench._common import (
    answer_for,
    load_average,
    machine,
    percentile,
    private_redis,
    process_cpu_seconds,
    table,
)
from bench._flat import TimedTracker
from bot.delivery.render import render, split
from tests.bot_harness import BotHarness
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

USER_ID_BASE = 100_000
_QUESTION = re.compile(r"bench question (\d+)")


class LogCounter(logging.Handler):
    """Counts WARNING+ records by message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"] += 1


@dataclass
class LagMonitor:
    """Event-loop lag: how late a 50 ms sleep wakes up."""

    interval: float = 0.05
    samples: list[float] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append(loop.time() - start - self.interval)


class GCMonitor:
    """Pauses of the cyclic garbage collector, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        gc.callbacks.append(self._callback)
        try:
            yield
        finally:
            gc.callbacks.remove(self._callback)


class GenericRebuildProbe:
    """Counts pydantic generic classes built (``Response[Message]`` …): aiogram's
    ``check_response`` parametrizes ``Response`` on every call, and pydantic caches the
    result only weakly. Wraps a private pydantic function; counts nothing if it moved."""

    def __init__(self) -> None:
        self.built: Counter[str] = Counter()
        self.seconds = 0.0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        original = getattr(pydantic_generics, "create_generic_submodel", None)
        if original is None:
            yield
            return

        def counted(model_name: str, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(model_name, *args)
            finally:
                self.seconds += time.perf_counter() - start
                self.built[model_name] += 1

        setattr(pydantic_generics, "create_generic_submodel", counted)  # noqa: B010
        try:
            yield
        finally:
            pydantic_generics.create_generic_submodel = original


_PINNED: list[Any] = []


def pin_responses() -> list[Any]:
    """Strong references to the parametrized ``Response`` classes the bot needs, so that
    pydantic's weak cache keeps them (what pinning them in the bot would do)."""
    from aiogram import methods
    from aiogram.methods.base import Response

    names = ("GetUpdates", "SendMessage", "EditMessageText", "SendChatAction", "GetMe")
    returning = [getattr(methods, name).__returning__ for name in names]
    return [Response.__class_getitem__(kind) for kind in returning]


@dataclass
class Result:
    conversations: int
    finished: bool
    wall_s: float
    submit: list[float]
    first: list[float]
    first_after_submit: list[float]
    complete: list[float]
    sends: int
    edits: int
    failed_calls: Counter[str]
    too_many: int
    logins: int
    submits: int
    correct: int
    handler_errors: int
    calls_per_s: float
    lag: list[float]
    cpu_s: float
    redis_cpu_s: float
    rss_mb: float
    rss_before_mb: float
    log_counts: Counter[str]
    redis_commands: Counter[str] = field(default_factory=Counter)
    gc_pauses: dict[int, list[float]] = field(default_factory=dict)
    limiter_evaluations: int = 0
    generics_built: Counter[str] = field(default_factory=Counter)
    generics_seconds: float = 0.0


def _ms(values: list[float]) -> list[str]:
    return [f"{percentile(values, q):.2f}" for q in (50, 95, 100)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(args: argparse.Namespace, redis_url: str, redis_pid: int) -> Result:
    n = args.conversations
    lines = -(-args.answer_chars // args.step)
    delay = args.stream_seconds / max(1, lines - 1)
    tg = FakeTelegram()
    submitted: dict[int, float] = {}

    def reply(prompt: str) -> str:
        match = _QUESTION.search(prompt)
        index = int(match.group(1)) if match else -1
        submitted[index] = tg.now()
        return answer_for(index, args.answer_chars)

    gptalk = FakeGPTalk(
        reply=reply, chunk_size=args.step, delay=delay, login_delay=args.login_delay
    )
    lag = LagMonitor()
    lag_task: asyncio.Task[None] | None = None
    rss_before = _rss_mb()
    await gptalk.start()
    await tg.start()
    harness = BotHarness(tg, gptalk, redis_url=redis_url)
    tracker = TimedTracker(tg.now)
    harness.tracker = tracker
    try:
        await harness.start()
        if args.pin_responses:
            _PINNED.extend(pin_responses())
        if args.gc_freeze:  # what a gc.freeze() after startup would do for the bot
            gc.collect()
            gc.freeze()
        users = [harness.user(USER_ID_BASE + i, f"U{i}") for i in range(n)]
        started: dict[int, float] = {}  # index → fake-clock time of the user's message
        update_of: dict[int, int] = {}  # index → update_id
        chat_of: dict[int, int] = {}  # index → chat id
        lag_task = asyncio.create_task(lag.run())
        gc_monitor, generics = GCMonitor(), GenericRebuildProbe()
        assert harness.app is not None
        checks0 = harness.app.scheduler.checks
        cpu0, redis_cpu0, wall0 = _cpu_s(), process_cpu_seconds(redis_pid), time.perf_counter()
        with gc_monitor.watching(), generics.watching():
            for i, user in enumerate(users):
                started[i] = tg.now()
                message = harness.say(user, f"bench question {i:04d}")
                update_of[i] = int(tg.pending_updates[-1]["update_id"])
                chat_of[i] = message["chat"]["id"]
                if args.ramp > 0:
                    await asyncio.sleep(args.ramp / n)
            finished = True
            deadline = time.monotonic() + args.timeout
            wanted = set(update_of.values())
            while not wanted <= tracker.done:
                if time.monotonic() > deadline:
                    finished = False
                    break
                await asyncio.sleep(0.05)
        wall_s = time.perf_counter() - wall0
        cpu_s = _cpu_s() - cpu0
        redis_cpu_s = process_cpu_seconds(redis_pid) - redis_cpu0
        lag_task.cancel()

        first_send: dict[int, float] = {}
        message_calls = [c for c in tg.calls if c.method in ("sendMessage", "editMessageText")]
        for call in message_calls:
            if call.ok and call.method == "sendMessage":
                first_send.setdefault(call.params["chat_id"], call.at)
        failed = Counter(f"{c.method}: {c.description}" for c in message_calls if not c.ok)
        ats = [c.at for c in message_calls]
        span = max(ats) - min(ats) if len(ats) > 1 else float("nan")
        correct = 0
        for i in range(n):
            expected = "".join(
                part.text for part in split(render(answer_for(i, args.answer_chars)))
            )
            bot_text = "".join(m.text for m in tg.bot_messages(chat_of[i]))
            correct += bot_text == expected
        return Result(
            conversations=n,
            finished=finished,
            wall_s=wall_s,
            submit=[submitted[i] - started[i] for i in range(n) if i in submitted],
            first=[
                first_send[chat_of[i]] - started[i] for i in range(n) if chat_of[i] in first_send
            ],
            first_after_submit=[
                first_send[chat_of[i]] - submitted[i]
                for i in range(n)
                if chat_of[i] in first_send and i in submitted
            ],
            complete=[
                tracker.finished_at[update_of[i]] - started[i]
                for i in range(n)
                if update_of[i] in tracker.finished_at
            ],
            sends=sum(1 for c in message_calls if c.ok and c.method == "sendMessage"),
            edits=sum(1 for c in message_calls if c.ok and c.method == "editMessageText"),
            failed_calls=failed,
            too_many=tg.too_many_requests,
            logins=gptalk.logins,
            submits=gptalk.submits,
            correct=correct,
            handler_errors=len(tracker.errors),
            calls_per_s=len(message_calls) / span,
            lag=lag.samples,
            cpu_s=cpu_s,
            redis_cpu_s=redis_cpu_s,
            rss_mb=_rss_mb(),
            rss_before_mb=rss_before,
            log_counts=Counter(),
            gc_pauses=gc_monitor.pauses,
            limiter_evaluations=harness.app.scheduler.checks - checks0,
            generics_built=generics.built,
            generics_seconds=generics.seconds,
        )
    finally:
        if lag_task is not None:
            lag_task.cancel()
        try:
            await asyncio.wait_for(harness.stop(), 90)
        finally:
            await tg.close()
            await gptalk.close()


def report(result: Result, args: argparse.Namespace) -> str:
    n = result.conversations
    status = "all handled" if result.finished else f"TIMED OUT after {args.timeout:g} s"
    rows = [
        ["time to GPTalk submit (s)", *_ms(result.submit), len(result.submit)],
        ["time to first visible message (s)", *_ms(result.first), len(result.first)],
        [
            "… of which after the GPTalk submit (s)",
            *_ms(result.first_after_submit),
            len(result.first_after_submit),
        ],
        ["time to complete (s)", *_ms(result.complete), len(result.complete)],
        [
            "event-loop lag (ms)",
            *(f"{percentile(result.lag, q) * 1000:.1f}" for q in (50, 95, 100)),
            len(result.lag),
        ],
    ]
    out = [
        f"## {n} conversations — {status} in {result.wall_s:.1f} s\n",
        f"answer {args.answer_chars} chars in lines of {args.step} chars over "
        f"~{args.stream_seconds:g} s; arrivals over {args.ramp:g} s; "
        f"GPTalk login takes {args.login_delay:g} s"
        + ("; gc.freeze() after startup" if args.gc_freeze else "")
        + ("; Response[...] classes pinned" if args.pin_responses else "")
        + "\n",
        table(["measure", "p50", "p95", "max", "samples"], rows),
        "",
        table(
            ["total", "value"],
            [
                ["sendMessage (ok)", result.sends],
                ["editMessageText (ok)", result.edits],
                ["send/edit calls per answer", f"{(result.sends + result.edits) / n:.2f}"],
                ["send/edit rate over the busy span (calls/s)", f"{result.calls_per_s:.1f}"],
                ["failed send/edit calls", sum(result.failed_calls.values())],
                [
                    "scheduler budget checks (per send/edit call)",
                    f"{result.limiter_evaluations:,} "
                    f"({result.limiter_evaluations / max(1, result.sends + result.edits):.1f})",
                ],
                [
                    "pydantic generic classes rebuilt (CPU ms)",
                    f"{sum(result.generics_built.values())} ({result.generics_seconds * 1000:.0f})",
                ],
                ["429s (FakeTelegram)", result.too_many],
                ["GPTalk logins / submits", f"{result.logins} / {result.submits}"],
                ["answers exactly as expected", f"{result.correct} / {n}"],
                ["handler errors", result.handler_errors],
                ["CPU s, this process (bot + fakes)", f"{result.cpu_s:.1f}"],
                ["CPU s, redis-server", f"{result.redis_cpu_s:.1f}"],
                [
                    "peak RSS MB (before start)",
                    f"{result.rss_mb:.0f} ({result.rss_before_mb:.0f})",
                ],
            ],
        ),
    ]
    gc_rows = [
        [gen, len(p), f"{sum(p) * 1000:.0f}", f"{max(p, default=0) * 1000:.1f}"]
        for gen, p in result.gc_pauses.items()
    ]
    out += ["", table(["GC generation", "collections", "total ms", "max ms"], gc_rows)]
    if result.redis_commands:
        top = ", ".join(f"{k} {v:,}" for k, v in result.redis_commands.most_common(8))
        out += [
            "",
            f"Redis commands (incl. in Lua): {sum(result.redis_commands.values()):,} ({top})",
        ]
    if result.failed_calls:
        out += ["", "failed calls:", *(f"- {k} × {v}" for k, v in result.failed_calls.items())]
    if result.log_counts:
        out += ["", "warnings logged:"]
        out += [f"- {v} × {k}" for k, v in result.log_counts.most_common(10)]
    return "\n".join(out)


def redis_command_counts(url: str) -> Counter[str]:
    """Commands redis-server has executed since it started, by name."""
    client = redis_sync.Redis.from_url(url)
    try:
        stats: dict[str, dict[str, Any]] = client.info("commandstats")
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


@contextlib.contextmanager
def profiled(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)
        print(f"\ncProfile (saved to {path}), top 25 by tottime:\n\n```")
        stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        print("```")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_load", description=__doc__)
    parser.add_argument("--conversations", "-n", type=int, default=200)
    parser.add_argument("--answer-chars", type=int, default=600)
    parser.add_argument("--step", type=int, default=30, help="characters per stream line")
    parser.add_argument("--stream-seconds", type=float, default=3.0)
    parser.add_argument(
        "--login-delay", type=float, default=0.0, help="seconds each GPTalk login takes"
    )
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once the bot has started"
    )
    parser.add_argument(
        "--pin-responses",
        action="store_true",
        help="keep aiogram's Response[...] classes referenced (pydantic caches them weakly)",
    )
    parser.add_argument("--ramp", type=float, default=0.0, help="spread arrivals over seconds")
    parser.add_argument("--timeout", type=float, default=None, help="default 60 + 0.6 s × N")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the run, dump stats here")
    parser.add_argument(
        "--sweep",
        type=lambda v: [int(x) for x in v.split(",") if x],
        metavar="N,N,…",
        help="flat-cost sweep (bench/_flat.py): the fake GPTalk in a child process, "
        "--step/--delay per line, one fresh bot per N; prints a table",
    )
    parser.add_argument("--delay", type=float, default=0.05, help="--sweep: s between lines")
    parser.add_argument(
        "--backends",
        default="redis",
        help="--sweep: run the bot with these budget backends at each N (redis,memory; "
        "memory = no REDIS_URL: in-process budgets and stores)",
    )
    parser.add_argument(
        "--naive",
        "--compare",
        dest="naive",
        default="",
        help="--sweep: also run these strategies at each N: the naive editors char-delta "
        "and interval, and draft (the bot with STREAM_MODE=draft, the first backend)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="--sweep: run the whole sweep this many times, round after round (the bot's CPU "
        "per chunk varies by ±15 %% between runs here; medians are printed per N)",
    )
    parser.add_argument("--json", metavar="PATH", help="--sweep: write every run as JSON here")
    args = parser.parse_args(argv)
    if args.conversations < 1:
        parser.error("--conversations must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.timeout is None and not args.sweep:
        args.timeout = 60 + 0.6 * args.conversations

    counter = LogCounter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(counter)
    logging.getLogger("aiogram").setLevel(logging.WARNING)

    print(f"# bench_load — {machine()}\n")
    if args.sweep:
        sweep(args)
        return
    with private_redis() as (redis_url, redis_pid):
        with profiled(args.profile):
            result = asyncio.run(run_load(args, redis_url, redis_pid))
        result.redis_commands = redis_command_counts(redis_url)
    result.log_counts = counter.counts
    print(report(result, args))
    print(f"\nload average at the end: {load_average()}")
    if not result.finished or result.correct != result.conversations:
        raise SystemExit(1)


def sweep(args: argparse.Namespace) -> list[_flat.FlatRun]:
    """The flat-cost sweep: the bot (and optionally naive editors) at each N."""
    step = args.step if args.step != 30 else 8  # the sweep's default is 8-char lines
    runs: list[_flat.FlatRun] = []
    backends = [name for name in args.backends.split(",") if name]
    naive = [name for name in args.naive.split(",") if name]
    unknown = (set(backends) - {"redis", "memory"}) | (set(naive) - {*_flat.NAIVE, "draft"})
    if unknown or not backends:
        raise SystemExit(f"unknown backends or strategies: {', '.join(sorted(unknown))}")
    with (
        private_redis() as (redis_url, _redis_pid),
        _flat.gptalk_server(args.answer_chars, step, args.delay) as (url, server_pid),
    ):

        def bot(
            n: int, backend: str, stream_mode: str, timeout: float, round_: int
        ) -> _flat.FlatRun:
            if backend == "redis":
                redis_sync.Redis.from_url(redis_url).flushall()
            run = asyncio.run(
                _flat.run_bot(
                    n, url=url, server_pid=server_pid,
                    redis_url=redis_url if backend == "redis" else None,
                    chars=args.answer_chars, step=step, delay=args.delay, timeout=timeout,
                    stream_mode=stream_mode, round_=round_,
                )
            )  # fmt: skip
            print(
                f"  … {run.label}, N = {n}: {run.us_per_chunk:.0f} µs/chunk, "
                f"{run.too_many} × 429, load {load_average()}"
            )
            return run

        # Round after round rather than each N K times in a row: a slow spell of the
        # machine then spreads over every N instead of skewing one.
        for round_, n in itertools.product(range(args.repeat), args.sweep):
            timeout = args.timeout or 120 + n / 10
            runs += [bot(n, backend, "edit", timeout, round_) for backend in backends]
            for name in naive:
                if name == "draft":
                    runs.append(bot(n, backends[0], "draft", timeout, round_))
                    continue
                run = asyncio.run(
                    _flat.run_naive(
                        name, n, url=url, server_pid=server_pid, chars=args.answer_chars,
                        step=step, delay=args.delay, timeout=timeout, round_=round_,
                    )
                )  # fmt: skip
                runs.append(run)
                print(f"  … {name}, N = {n}: {run.too_many} × 429, load {load_average()}")
    print(
        f"\nanswers of {args.answer_chars} chars in {step}-char lines every "
        f"{args.delay * 1000:.0f} ms, all users at once; bot CPU = this process less the "
        "fake Bot API's request handler; times from the user's message:\n"
    )
    print(table(_flat.SUMMARY_HEADERS, _flat.summary_rows(runs)))
    if args.repeat > 1:
        print("\nbot CPU µs per chunk over the rounds, and the medians against N = 100's:\n")
        print(table(_flat.COST_HEADERS, _flat.cost_rows(runs)))
    for run in runs:
        if run.too_many or run.events:
            print(f"\n{run.label}, N = {run.n}: {_flat.too_many_story(run)}")
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        _flat.dump(runs, args.json)
    return runs


if __name__ == "__main__":
    main()
