"""Regenerate every plot of bench/REPORT.md: ``.venv/bin/python -m bench.plots``.

Runs the measurements first (``bench_load --sweep``: the bot at N = 25 … 1000 with the
Redis and the in-process budgets, three rounds; at N = 200 the bot, the naive editors and the bot
streaming drafts), writes them to ``bench/plots/data/*.json``, then draws
``bench/plots/*.png``. ``--from-data`` only draws, from the JSON files in the
repository. The "before" series (commit ``f0cc985``) is measured only with
``--before-tree PATH`` (a checkout of that commit with this ``bench/`` and
``tests/fake_telegram.py`` copied in); otherwise the committed
``data/flat_before.json`` is drawn.

Needs matplotlib (``pip install -e '.[dev]'``). Takes ~20 minutes with measurements
(~23 with ``--before-tree``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench._common import percentile
from bench._flat import TELEGRAM_RATE, FlatRun, load

HERE = Path(__file__).resolve().parent
OUT = HERE / "plots"
DATA = OUT / "data"
SIZES = "25,50,100,200,500,1000"
BEFORE_SIZES = "100,200,500,1000"
NAIVE_N = "200"
ROUNDS = 3  # of the after sweep: plot 3 draws the median over them, and their range
COLORS = {
    "bot": "tab:blue",
    "draft": "tab:green",
    "char-delta": "tab:red",
    "interval": "tab:orange",
}
DRAFT_COLOR = "lightgreen"
# Plot 2's series: (runs' key, line style, label).
LATENCY_SERIES = (
    ("redis", "-", "Redis"),
    ("memory", "--", "in-process"),
    ("before", ":", "before"),
)


def measure(before_tree: Path | None) -> None:
    DATA.mkdir(parents=True, exist_ok=True)

    def sweep(cwd: Path, sizes: str, out: Path, *extra: str) -> None:
        command = [sys.executable, "-m", "bench.bench_load", "--sweep", sizes, "--json"]
        subprocess.run([*command, str(out), *extra], cwd=cwd, check=True)

    sweep(
        HERE.parent, SIZES, DATA / "flat_after.json", "--backends", "redis,memory",
        "--repeat", str(ROUNDS),
    )  # fmt: skip
    if before_tree is not None:
        sweep(before_tree, BEFORE_SIZES, DATA / "flat_before.json")
    sweep(HERE.parent, NAIVE_N, DATA / "naive.json", "--naive", "char-delta,interval,draft")


def plot_calls(runs: list[FlatRun], path: Path) -> None:
    """Plot 1: send/edit/draft calls per second over time, and 429s, per strategy."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.0 * len(runs)), sharex=True)
    horizon = max(max((c[0] for c in r.calls), default=0) for r in runs)
    seconds = list(range(int(horizon) + 1))
    for ax, run in zip(axes, runs, strict=True):
        ok = Counter(int(t) for t, m, status in run.calls if status == 200 and "Draft" not in m)
        drafts = Counter(int(t) for t, m, status in run.calls if status == 200 and "Draft" in m)
        limited = Counter(int(t) for t, _m, status in run.calls if status == 429)
        bottom = [0] * len(seconds)
        for counts, color, label in (
            (ok, COLORS[run.strategy], "send/edit"),
            (drafts, DRAFT_COLOR, "draft"),
            (limited, "black", "429"),
        ):
            if not counts and label != "429":
                continue
            heights = [counts[s] for s in seconds]
            ax.bar(seconds, heights, width=1.0, bottom=bottom, color=color, label=label)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.axhline(TELEGRAM_RATE, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("calls/s")
        done = max(run.final, default=float("nan"))
        made = f"{sum(ok.values()) + sum(drafts.values())} calls ok" + (
            f" ({sum(drafts.values())} drafts)" if drafts else ""
        )
        ax.set_title(
            f"{run.label}: {made}, {run.too_many} × 429, last answer final at {done:.0f} s",
            fontsize=9,
        )
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel(f"seconds since {runs[0].n} users wrote at once (dashed: 30 calls/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_latency(series: dict[str, list[FlatRun]], path: Path) -> None:
    """Plot 2: time to first visible message and to final edit against N, per backend."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    everything = [r for runs in series.values() for r in runs]
    for ax, attr, title in zip(
        axes, ("first", "final"), ("first visible message", "final edit"), strict=True
    ):
        for key, style, label in LATENCY_SERIES:
            runs = series.get(key, [])
            if not runs:
                continue
            ns = [r.n for r in runs]
            for q, marker, color in (
                (50, "o", "tab:blue"),
                (95, "s", "tab:orange"),
                (100, "^", "tab:red"),
            ):
                ax.plot(
                    ns,
                    [percentile(getattr(r, attr), q) for r in runs],
                    style,
                    marker=marker,
                    color=color,
                    label=f"{label} {'max' if q == 100 else f'p{q}'}",
                )
        ns = sorted({r.n for r in everything})
        ax.plot(
            ns, [n / TELEGRAM_RATE for n in ns], "k-", linewidth=2.5, alpha=0.3, label="N / 30 s"
        )
        ax.set_title(f"time to {title}", fontsize=10)
        ax.set_xlabel("N users writing at once")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_cpu(
    after: list[FlatRun], memory: list[FlatRun], before: list[FlatRun], path: Path
) -> None:
    """Plot 3: the bot's CPU per streamed chunk against N (and event-loop lag p99): the
    median over a sweep's rounds, with their range."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    medians: dict[str, dict[int, float]] = {}
    for runs, style, label in (
        (after, "-o", "after, Redis"),
        (memory, "--^", "after, in-process"),
        (before, ":s", "before (f0cc985), Redis"),
    ):
        if not runs:
            continue
        ns = sorted({r.n for r in runs})
        cost = [[r.us_per_chunk for r in runs if r.n == n] for n in ns]
        middle = [statistics.median(values) for values in cost]
        medians[label] = dict(zip(ns, middle, strict=True))
        spread = [
            [m - min(v) for m, v in zip(middle, cost, strict=True)],
            [max(v) - m for m, v in zip(middle, cost, strict=True)],
        ]
        axes[0].errorbar(ns, middle, yerr=spread, fmt=style, capsize=3, label=label)
        lag = [statistics.median(percentile(r.lag, 99) * 1e3 for r in runs if r.n == n) for n in ns]
        axes[1].plot(ns, lag, style, label=label)
    for label, style in (("after, Redis", "-"), ("after, in-process", "--")):
        base = medians.get(label, {}).get(100)
        if base:
            axes[0].axhline(1.2 * base, color="grey", linestyle=style, linewidth=1)
            axes[0].text(
                max(medians[label]), 1.2 * base, f"1.2 × N=100, {label[7:]} (goal) ",
                fontsize=7, va="bottom", ha="right",
            )  # fmt: skip
    axes[1].axhline(50, color="grey", linestyle="--", linewidth=1)
    axes[0].set_ylabel("bot CPU µs per chunk, median")
    axes[1].set_ylabel("event-loop lag p99, ms")
    for ax in axes:
        ax.set_xlabel("N concurrent streams")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw() -> list[Path]:
    runs = sorted(load(str(DATA / "flat_after.json")), key=lambda r: r.n)
    after = [r for r in runs if r.strategy == "bot" and r.backend == "redis"]
    memory = [r for r in runs if r.strategy == "bot" and r.backend == "memory"]
    before_file = DATA / "flat_before.json"
    before = load(str(before_file)) if before_file.exists() else []
    naive = load(str(DATA / "naive.json"))
    order = {"bot": 0, "draft": 1, "char-delta": 2, "interval": 3}
    naive.sort(key=lambda r: order.get(r.strategy, 9))
    paths = [OUT / "calls_over_time.png", OUT / "latency_vs_n.png", OUT / "cpu_per_chunk.png"]
    plot_calls(naive, paths[0])
    first = [r for r in after if r.round_no == 0], [r for r in memory if r.round_no == 0]
    plot_latency({"redis": first[0], "memory": first[1], "before": before}, paths[1])
    plot_cpu(after, memory, before, paths[2])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("--from-data", action="store_true", help="draw only, from data/*.json")
    parser.add_argument("--before-tree", type=Path, help="checkout of f0cc985 to measure")
    args = parser.parse_args(argv)
    if not args.from_data:
        measure(args.before_tree)
    for path in draw():
        size = path.stat().st_size
        print(f"{path.relative_to(HERE.parent)}: {size / 1024:.0f} KB")
        if size > 200 * 1024:
            print(f"  warning: {path.name} is over 200 KB")


if __name__ == "__main__":
    main()
