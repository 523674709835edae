"""Helpers shared by the benchmarks: test data, timing, tables, a private redis-server."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.redis_server import RedisStartError, start_redis, stop_process

__all__ = [
    "Runs",
    "answer_for",
    "load_average",
    "machine",
    "markdown_answer",
    "median",
    "percentile",
    "private_redis",
    "process_cpu_seconds",
    "repeat",
    "table",
]

_VOCABULARY = (
    "the answer depends on how the data flows through each stage of the pipeline and which "
    "parts of it are bounded by input output rather than by computation so we measure first "
    "cache values only when profiling shows repeated work and keep interfaces small naïve "
    "approaches café résumé Привет мир данные поток 🍂 ✓"
)
_WORDS = _VOCABULARY.split()
_LANGS = ("python", "bash", "json", "")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    roll = rng.random()
    i = rng.randrange(len(words))
    if roll < 0.25:
        words[i] = f"**{words[i]}**"
    elif roll < 0.40:
        words[i] = f"*{words[i]}*"
    elif roll < 0.55:
        words[i] = f"`{words[i]}()`"
    elif roll < 0.62:
        words[i] = f"[{words[i]}](https://example.com/{words[i].strip('*`')}/{rng.randint(1, 99)})"
    return " ".join(words).capitalize() + "."


def _code_block(rng: random.Random) -> str:
    lang = rng.choice(_LANGS)
    lines = []
    for n in range(rng.randint(3, 10)):
        indent = "    " * rng.randint(0, 2)
        lines.append(
            f"{indent}value_{n} = compute({rng.randint(0, 999)}, key='{rng.choice(_WORDS)}')"
        )
    return f"```{lang}\n" + "\n".join(lines) + "\n```"


def _block(rng: random.Random, index: int) -> str:
    roll = rng.random()
    if index % 12 == 0:
        return f"## Section {index // 12 + 1}: {rng.choice(_WORDS)}"
    if roll < 0.50:
        return " ".join(_sentence(rng) for _ in range(rng.randint(2, 5)))
    if roll < 0.70:
        return "\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(2, 5)))
    if roll < 0.80:
        return "\n".join(f"{k}. {_sentence(rng)}" for k in range(1, rng.randint(3, 6)))
    return _code_block(rng)


def markdown_answer(chars: int, seed: int = 1) -> str:
    """A deterministic model-like Markdown answer of exactly ``chars`` characters:
    headings, paragraphs (bold, italic, inline code, links, some non-ASCII), bullet and
    numbered lists, fenced code blocks. It may end inside a block, as a stream does."""
    rng = random.Random(seed)
    blocks: list[str] = []
    size = 0
    while size < chars:
        block = _block(rng, len(blocks))
        blocks.append(block)
        size += len(block) + 2
    return "\n\n".join(blocks)[:chars]


def answer_for(index: int, chars: int) -> str:
    """The answer of load-benchmark conversation ``index``: unique, ``chars`` long."""
    head = f"Answer {index:04d}: "
    return head + markdown_answer(chars - len(head), seed=index % 17)


@dataclass
class Runs:
    """Per-run wall-clock and CPU seconds of a repeated measurement."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def wall_median(self) -> float:
        return median(self.wall)

    @property
    def cpu_median(self) -> float:
        return median(self.cpu)


def repeat(
    fn: Callable[[], object], *, min_time: float = 0.5, min_runs: int = 3, max_runs: int = 200
) -> Runs:
    """Run ``fn`` until ``min_time`` seconds and ``min_runs`` runs; return each run's wall
    and process-CPU seconds (CPU time is the steadier figure on a machine shared with
    other work)."""
    runs = Runs()
    while len(runs.wall) < max_runs and (len(runs.wall) < min_runs or sum(runs.wall) < min_time):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        fn()
        runs.cpu.append(time.process_time() - cpu0)
        runs.wall.append(time.perf_counter() - wall0)
    return runs


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    """One line naming the date, the machine and the interpreter."""
    cpus = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; {cpus} CPUs ({model}); Python {platform.python_version()} "
        f"({sys.implementation.name}); {platform.system()} {platform.release()}; "
        f"load average {load_average()}"
    )


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews wall times)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, int]]:
    """A throw-away redis-server on a free loopback port (no persistence), started like
    the tests start theirs; yields its URL and pid, stops it after."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        try:
            proc, port = start_redis(exe, Path(workdir))
        except RedisStartError as exc:
            raise SystemExit(str(exc)) from None
        try:
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            stop_process(proc)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (NaN if unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
