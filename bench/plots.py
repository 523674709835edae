"""Regenerate every plot of bench/REPORT.md: ``.venv/bin/python -m bench.plots``.

Runs the measurements first (``bench_load --sweep``: the bot at N = 100, 200, 500, 1000;
the bot and the naive editors at N = 200), writes them to ``bench/plots/data/*.json``,
then draws ``bench/plots/*.png``. ``--from-data`` only draws, from the JSON files in the
repository. The "before" series (commit ``f0cc985``) is measured only with
``--before-tree PATH`` (a checkout of that commit with this ``bench/`` and
``tests/fake_telegram.py`` copied in); otherwise the committed
``data/flat_before.json`` is drawn.

Needs matplotlib (``pip install -e '.[dev]'``). Takes ~15 minutes with measurements.
"""

from __future__ import annotations

import argparse
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
SIZES = "100,200,500,1000"
SMALL_SIZES = "25,50"  # after only: where the event loop is not yet saturated
NAIVE_N = "200"
COLORS = {"bot": "tab:blue", "char-delta": "tab:red", "interval": "tab:orange"}


def measure(before_tree: Path | None) -> None:
    DATA.mkdir(parents=True, exist_ok=True)

    def sweep(cwd: Path, sizes: str, out: Path, *extra: str) -> None:
        command = [sys.executable, "-m", "bench.bench_load", "--sweep", sizes, "--json"]
        subprocess.run([*command, str(out), *extra], cwd=cwd, check=True)

    sweep(HERE.parent, SIZES, DATA / "flat_after.json")
    sweep(HERE.parent, SMALL_SIZES, DATA / "flat_small.json")
    if before_tree is not None:
        sweep(before_tree, SIZES, DATA / "flat_before.json")
    sweep(HERE.parent, NAIVE_N, DATA / "naive.json", "--naive", "char-delta,interval")


def plot_calls(runs: list[FlatRun], path: Path) -> None:
    """Plot 1: send/edit calls per second over time, and 429s, per strategy."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.2 * len(runs)), sharex=True)
    horizon = max(max((c[0] for c in r.calls), default=0) for r in runs)
    for ax, run in zip(axes, runs, strict=True):
        ok = Counter(int(t) for t, _m, status in run.calls if status == 200)
        limited = Counter(int(t) for t, _m, status in run.calls if status == 429)
        seconds = list(range(int(horizon) + 1))
        ax.bar(seconds, [ok[s] for s in seconds], width=1.0, color=COLORS[run.strategy])
        ax.bar(
            seconds,
            [limited[s] for s in seconds],
            width=1.0,
            bottom=[ok[s] for s in seconds],
            color="black",
            label="429",
        )
        ax.axhline(TELEGRAM_RATE, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("calls/s")
        done = max(run.final, default=float("nan"))
        ax.set_title(
            f"{run.strategy}: {sum(ok.values())} calls ok, {run.too_many} × 429, "
            f"last answer final at {done:.0f} s",
            fontsize=9,
        )
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel(f"seconds since {runs[0].n} users wrote at once (dashed: 30 calls/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_latency(after: list[FlatRun], before: list[FlatRun], path: Path) -> None:
    """Plot 2: time to first visible message and to final edit against N."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, attr, title in zip(
        axes, ("first", "final"), ("first visible message", "final edit"), strict=True
    ):
        for runs, style, label in ((after, "-", "after"), (before, ":", "before")):
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
        ns = sorted({r.n for r in after + before})
        ax.plot(ns, [n / TELEGRAM_RATE for n in ns], "k--", label="N / 30 s")
        ax.set_title(f"time to {title}", fontsize=10)
        ax.set_xlabel("N users writing at once")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_cpu(after: list[FlatRun], before: list[FlatRun], path: Path) -> None:
    """Plot 3: CPU per streamed chunk against N (and event-loop lag p99)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for runs, style, label in ((after, "-o", "after"), (before, ":s", "before (f0cc985)")):
        if not runs:
            continue
        ns = [r.n for r in runs]
        axes[0].plot(ns, [r.us_per_chunk for r in runs], style, label=label)
        axes[1].plot(ns, [percentile(r.lag, 99) * 1000 for r in runs], style, label=label)
    at_100 = [r for r in after if r.n == 100]
    if at_100:
        base = at_100[0].us_per_chunk
        axes[0].axhline(1.2 * base, color="grey", linestyle="--", linewidth=1)
        axes[0].text(after[0].n, 1.2 * base, " 1.2 × N=100 (goal)", fontsize=7, va="bottom")
    axes[1].axhline(50, color="grey", linestyle="--", linewidth=1)
    axes[0].set_ylabel("bot CPU µs per streamed chunk")
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
    after = [r for r in load(str(DATA / "flat_after.json")) if r.strategy == "bot"]
    small = DATA / "flat_small.json"
    after = sorted((load(str(small)) if small.exists() else []) + after, key=lambda r: r.n)
    before_file = DATA / "flat_before.json"
    before = load(str(before_file)) if before_file.exists() else []
    naive = load(str(DATA / "naive.json"))
    order = {"bot": 0, "char-delta": 1, "interval": 2}
    naive.sort(key=lambda r: order.get(r.strategy, 9))
    paths = [OUT / "calls_over_time.png", OUT / "latency_vs_n.png", OUT / "cpu_per_chunk.png"]
    plot_calls(naive, paths[0])
    plot_latency(after, before, paths[1])
    plot_cpu(after, before, paths[2])
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
