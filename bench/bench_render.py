"""Cost of Markdown rendering, and how often the streaming editor renders.

Part 1: ``bot.delivery.render.render()`` and ``split()`` on model-like Markdown answers (headings,
paragraphs with bold/italic/code/links, lists, fenced code, some non-ASCII) of 1k, 10k,
50k, 100k characters: ms per call (median of N runs, process CPU time).

Part 1b (``--layout-sizes``, default 10k/100k/300k): the streaming layout alone, as an
answer streamed at ``--layout-rate`` characters per second (400) is laid out once per
second (``EDIT_INTERVAL``): total process CPU of laying out every prefix, rendering the
whole answer each time (before: ``FullLayout``, the algorithm the streaming editor used
until 2026-11-30) and rendering only the open tail (after: ``bot.delivery.layout.StreamLayout``).

Part 2: one answer of each size streamed through the real bot (``BotHarness`` with
in-process stores, ``FakeTelegram`` in real time, ``FakeGPTalk`` sending ``--step``
more characters every ``step / rate`` seconds). ``bot.delivery.streaming.render`` (and
``split``/``cut_ranges``, and ``StreamingReply._layout``) are wrapped in *this process
only* to count the renders per answer and the time they take.

    .venv/bin/python -m bench.bench_render [--sizes 1000,10000,50000,100000] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import bot.delivery.layout as layout_module
import bot.delivery.streaming as streaming
from bench._common import load_average, machine, markdown_answer, median, repeat, table
from bot.delivery.layout import StreamLayout
from bot.delivery.render import Rendered, cut_ranges, render, split
from tests.bot_harness import BotHarness
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

P = ParamSpec("P")
R = TypeVar("R")


# ------------------------------------------------------------------------ part 1


@dataclass
class CostRow:
    chars: int
    rendered_units: int
    entities: int
    parts: int
    render_s: float
    split_s: float
    both_s: float
    runs: int

    def cells(self) -> list[object]:
        return [
            f"{self.chars:,}",
            f"{self.rendered_units:,}",
            f"{self.entities:,}",
            self.parts,
            f"{self.render_s * 1000:,.2f}",
            f"{self.split_s * 1000:,.2f}",
            f"{self.both_s * 1000:,.2f}",
            self.runs,
        ]


COST_HEADERS = [
    "markdown chars",
    "rendered UTF-16 units",
    "entities",
    "messages",
    "render ms",
    "split ms",
    "render+split ms",
    "N",
]


def bench_cost(chars: int, min_time: float) -> CostRow:
    markdown = markdown_answer(chars)
    rendered = render(markdown)
    parts = split(rendered)
    render_runs = repeat(lambda: render(markdown), min_time=min_time, min_runs=5)
    split_runs = repeat(lambda: split(rendered), min_time=min_time, min_runs=5)
    both_runs = repeat(lambda: split(render(markdown)), min_time=min_time, min_runs=5)
    return CostRow(
        chars,
        rendered.units,
        len(rendered.entities),
        len(parts),
        render_runs.cpu_median,
        split_runs.cpu_median,
        both_runs.cpu_median,
        len(both_runs.cpu),
    )


# ----------------------------------------------------------------------- part 1b


class FullLayout:
    """The streaming layout before 2026-11-30: the whole answer rendered per edit."""

    def __init__(self) -> None:
        self.frozen: list[Rendered] = []
        self.frozen_end = 0
        self.region = Rendered("")
        self.rendered_chars = 0

    def layout(self, markdown: str, *, done: bool) -> list[Rendered]:
        full = render(markdown)
        self.rendered_chars += len(markdown)
        if done and self.frozen and full.slice(0, self.frozen_end) != self.region:
            self.frozen, self.frozen_end = [], 0
        rest = full.slice(self.frozen_end, len(full.text))
        ranges = cut_ranges(rest)
        if not done and len(ranges) > 1:
            for start, end in ranges[:-1]:
                part = rest.slice(start, end).trimmed()
                if part.text:
                    self.frozen.append(part)
            self.frozen_end += ranges[-1][0]
            self.region = full.slice(0, self.frozen_end)
            rest = rest.slice(ranges[-1][0], len(rest.text))
        return [*self.frozen, *split(rest)]


LAYOUT_HEADERS = [
    "markdown chars",
    "layouts (edits)",
    "before: CPU s total",
    "before: chars rendered",
    "after: CPU s total",
    "after: chars rendered",
    "× less CPU",
    "after: max ms per edit",
]


def bench_layout(chars: int, rate: float) -> list[object]:
    """Lay out every prefix an edit per second would see; same final messages."""
    markdown = markdown_answer(chars, seed=7)
    step = max(1, round(rate))  # one layout per second (EDIT_INTERVAL 1 s)
    prefixes = [markdown[:end] for end in range(step, chars, step)] + [markdown]
    results = []
    for make in (FullLayout, StreamLayout):
        engine = make()
        worst = 0.0
        cpu0 = time.process_time()
        for prefix in prefixes[:-1]:
            t = time.process_time()
            engine.layout(prefix, done=False)
            worst = max(worst, time.process_time() - t)
        final = engine.layout(markdown, done=True)
        results.append((time.process_time() - cpu0, engine.rendered_chars, worst, final))
    (before, before_chars, _, old), (after, after_chars, worst, new) = results
    if old != new:
        raise AssertionError(f"the {chars}-char answer was laid out differently")
    return [
        f"{chars:,}",
        len(prefixes),
        f"{before:.2f}",
        f"{before_chars:,}",
        f"{after:.2f}",
        f"{after_chars:,}",
        f"{before / after:.0f}",
        f"{worst * 1000:.1f}",
    ]


# ------------------------------------------------------------------------ part 2


@dataclass
class Counter:
    calls: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    durations: list[float] = field(default_factory=list)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.calls += 1
                self.seconds += elapsed
                self.max_seconds = max(self.max_seconds, elapsed)
                self.durations.append(elapsed)

        return counted


@dataclass
class Instrumented:
    render: Counter = field(default_factory=Counter)
    split: Counter = field(default_factory=Counter)
    cut_ranges: Counter = field(default_factory=Counter)
    layout: Counter = field(default_factory=Counter)


def instrument() -> Instrumented:
    """Wrap the streaming editor's rendering functions (this process only)."""
    counters = Instrumented()
    for name in ("render", "split", "cut_ranges"):  # names bot.delivery.layout imported
        counter: Counter = getattr(counters, name)
        setattr(layout_module, name, counter.wrap(getattr(layout_module, name)))
    layout = streaming.StreamingReply._layout
    streaming.StreamingReply._layout = counters.layout.wrap(layout)  # type: ignore[method-assign]
    return counters


@dataclass
class StreamRow:
    chars: int
    stream_s: float
    answer_s: float
    sends: int
    edits: int
    renders: int
    render_ms: float
    render_median_ms: float
    render_max_ms: float
    layout_ms: float
    cpu_s: float

    def cells(self) -> list[object]:
        per = self.render_ms / self.renders if self.renders else 0.0
        return [
            f"{self.chars:,}",
            f"{self.stream_s:.1f}",
            f"{self.answer_s:.1f}",
            self.sends,
            self.edits,
            self.renders,
            f"{self.render_median_ms:.1f}",
            f"{per:.1f}",
            f"{self.render_max_ms:.1f}",
            f"{self.layout_ms:,.0f}",
            f"{self.layout_ms / 1000 / self.answer_s:.0%}",
            f"{self.cpu_s:.2f}",
        ]


STREAM_HEADERS = [
    "markdown chars",
    "stream s",
    "answer s",
    "sendMessage",
    "editMessageText",
    "renders",
    "ms/render (median)",
    "ms/render (mean)",
    "max ms/render",
    "_layout ms total",
    "_layout / answer time",
    "process CPU s",
]


async def bench_stream(chars: int, step: int, rate: float, counters: Instrumented) -> StreamRow:
    text = markdown_answer(chars, seed=7)
    lines = -(-chars // step)
    delay = step / rate
    gptalk = FakeGPTalk(answer=text, chunk_size=step, delay=delay)
    await gptalk.start()
    try:
        async with FakeTelegram() as tg:
            harness = BotHarness(tg, gptalk, redis_url=None)
            await harness.start()
            try:
                before = Instrumented(
                    *(Counter(c.calls, c.seconds) for c in vars(counters).values())
                )
                counters.render.max_seconds = 0.0
                user = harness.user(2001, "Bench")
                cpu0, wall0 = time.process_time(), time.perf_counter()
                question = harness.say(user, "write a long answer")
                await harness.settle(within=60 + 3 * (lines - 1) * delay)
                answer_s = time.perf_counter() - wall0
                cpu_s = time.process_time() - cpu0
                expected = "".join(part.text for part in split(render(text)))
                if harness.answer(question) != expected:
                    raise AssertionError(f"the {chars}-char answer arrived wrong")
                chat_id = question["chat"]["id"]
                return StreamRow(
                    chars,
                    (lines - 1) * delay,
                    answer_s,
                    sum(1 for c in tg.calls_to("sendMessage", chat_id) if c.ok),
                    sum(1 for c in tg.calls_to("editMessageText", chat_id) if c.ok),
                    counters.render.calls - before.render.calls,
                    (counters.render.seconds - before.render.seconds) * 1000,
                    median(counters.render.durations[before.render.calls :]) * 1000,
                    counters.render.max_seconds * 1000,
                    (counters.layout.seconds - before.layout.seconds) * 1000,
                    cpu_s,
                )
            finally:
                await harness.stop()
    finally:
        await gptalk.close()


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_render", description=__doc__)
    parser.add_argument("--sizes", type=_ints, default=[1_000, 10_000, 50_000, 100_000])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--step", type=int, default=100, help="characters per stream line")
    parser.add_argument("--rate", type=float, default=2000.0, help="streamed characters/s")
    parser.add_argument("--no-stream", action="store_true", help="skip part 2")
    parser.add_argument("--layout-sizes", type=_ints, default=[10_000, 100_000, 300_000])
    parser.add_argument("--layout-rate", type=float, default=400.0, help="chars/s, part 1b")
    parser.add_argument("--only-layout", action="store_true", help="run part 1b only")
    parser.add_argument("--profile", action="store_true", help="cProfile render+split, largest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # In-process stores are what this benchmark wants: drop the bot's warning about them.
    logging.getLogger("bot").addFilter(lambda record: "REDIS_URL" not in record.getMessage())

    print(f"# bench_render — {machine()}\n")
    if args.layout_sizes:
        layout_rows = [bench_layout(chars, args.layout_rate) for chars in args.layout_sizes]
        print(
            f"Streaming layout, one layout per second at {args.layout_rate:g} chars/s, "
            "process CPU (before: whole answer rendered per edit; after: open tail):\n"
        )
        print(table(LAYOUT_HEADERS, layout_rows))
        print(f"\nload average: {load_average()}\n")
    if args.only_layout:
        return
    rows = []
    for chars in args.sizes:
        rows.append(bench_cost(chars, args.min_time))
        print(f"  … {chars} chars: {rows[-1].both_s * 1000:.2f} ms", flush=True)
    print("\nrender() / split() / split(render()), median process CPU ms per call:\n")
    print(table(COST_HEADERS, [row.cells() for row in rows]))
    print()

    if args.profile:
        markdown = markdown_answer(max(args.sizes))
        profiler = cProfile.Profile()
        profiler.runcall(lambda: split(render(markdown)))
        print(f"cProfile of split(render()) at {max(args.sizes):,} chars (top 15, tottime):\n")
        print("```")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.strip_dirs().sort_stats("tottime").print_stats(15)
        print("```\n")

    if args.no_stream:
        return
    counters = instrument()
    streamed: list[StreamRow] = []
    for chars in args.sizes:
        streamed.append(asyncio.run(bench_stream(chars, args.step, args.rate, counters)))
        print(f"  … streamed {chars} chars: {streamed[-1].renders} renders", flush=True)
    print(
        f"\nOne answer streamed through the bot ({args.step} chars per line, "
        f"{args.rate:g} chars/s; Telegram in real time, EDIT_INTERVAL 1 s):\n"
    )
    print(table(STREAM_HEADERS, [row.cells() for row in streamed]))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
