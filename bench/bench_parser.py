"""Throughput of the GPTalk stream parsing path.

Part 1, pure parsing (no I/O): an answer of 1k, 10k, 100k characters is encoded as the
real protocol sends it — ``data: {"content": "<the whole text so far>"}`` lines, each
``step`` characters longer than the previous one, then ``data: [DONE]`` — and fed in
64 KiB chunks through ``LineSplitter`` → ``parse_data_line`` → ``DeltaDecoder``, exactly
the loop ``GPTalkClient._read_stream`` had before ``StreamDecoder``, and through
``LineSplitter`` → ``StreamDecoder`` (the loop it has now, decoding only what each line
adds). Reported: wire bytes, MB/s of wire bytes, ms per answer (median) for both, and
the time split between the three stages of the full parse.

Part 2, end to end: ``GPTalkClient.stream`` against a ``FakeGPTalk`` (delay 0) running in
a child process on loopback, for a 100k answer in 10k-character steps (and finer steps):
wall ms per answer and the client process's CPU ms per answer.

    .venv/bin/python -m bench.bench_parser [--sizes 1000,10000,100000] [--steps 8,100,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench._common import (
    load_average,
    machine,
    markdown_answer,
    median,
    process_cpu_seconds,
    repeat,
    table,
)
from gptalk import GPTalkClient
from gptalk._stream import DONE, DeltaDecoder, LineSplitter, StreamDecoder, parse_data_line

CHUNK = 64 * 1024
MB = 1_000_000


def wire_for(text: str, step: int) -> bytes:
    """The stream body the server sends for ``text`` (as tests/fake_gptalk.py does)."""
    ends = [*range(step, len(text), step), len(text)]
    parts = [b": keep-alive\n\n"]
    for end in ends:
        payload = json.dumps({"content": text[:end]}, ensure_ascii=False).encode()
        parts.append(b"data: " + payload + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def chunked(wire: bytes, size: int = CHUNK) -> list[bytes]:
    return [wire[i : i + size] for i in range(0, len(wire), size)]


def split_only(chunks: Sequence[bytes]) -> int:
    splitter, lines = LineSplitter(), 0
    for chunk in chunks:
        for _ in splitter.feed(chunk):
            lines += 1
    return lines


def split_and_parse(chunks: Sequence[bytes]) -> int:
    splitter, items = LineSplitter(), 0
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if parse_data_line(line) is not None:
                items += 1
    return items


def full_path(chunks: Sequence[bytes]) -> str:
    """What ``GPTalkClient._read_stream`` did with the chunks before ``StreamDecoder``,
    minus the network: every line decoded in full."""
    splitter, decoder = LineSplitter(), DeltaDecoder()
    received: list[str] = []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            item = parse_data_line(line)
            if item is DONE:
                return "".join(received)
            if isinstance(item, str) and (delta := decoder.delta(item)):
                received.append(delta)
    raise AssertionError("no [DONE]")


def incremental_path(chunks: Sequence[bytes]) -> str:
    """What ``GPTalkClient._read_stream`` does with the chunks now, minus the network."""
    splitter, decoder = LineSplitter(), StreamDecoder()
    received: list[str] = []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            item = decoder.feed(line)
            if item is DONE:
                return "".join(received)
            if isinstance(item, str) and item:
                received.append(item)
    raise AssertionError("no [DONE]")


@dataclass
class ParseRow:
    chars: int
    step: int
    lines: int
    wire_bytes: int
    split_s: float
    parse_s: float
    full_s: float
    full_wall_s: float
    incremental_s: float

    def cells(self) -> list[object]:
        return [
            f"{self.chars:,}",
            f"{self.step:,}",
            f"{self.lines:,}",
            f"{self.wire_bytes / MB:,.2f}",
            f"{self.full_s * 1000:,.2f}",
            f"{self.incremental_s * 1000:,.2f}",
            f"{self.full_s / self.incremental_s:,.1f}",
            f"{self.wire_bytes / MB / self.full_s:,.0f}",
            f"{self.full_wall_s * 1000:,.2f}",
            f"{self.split_s * 1000:,.2f}",
            f"{(self.parse_s - self.split_s) * 1000:,.2f}",
            f"{(self.full_s - self.parse_s) * 1000:,.2f}",
        ]


PARSE_HEADERS = [
    "answer chars",
    "step",
    "data lines",
    "wire MB",
    "full parse CPU ms/answer",
    "StreamDecoder CPU ms/answer",
    "× less CPU",
    "MB/s (wire, full parse)",
    "wall ms/answer",
    "split ms",
    "+parse ms",
    "+delta ms",
]


def bench_parsing(chars: int, step: int, min_time: float) -> ParseRow:
    text = markdown_answer(chars)
    wire = wire_for(text, step)
    chunks = chunked(wire)
    if full_path(chunks) != text or incremental_path(chunks) != text:
        raise AssertionError(f"parsing lost text ({chars}, {step})")
    lines = split_and_parse(chunks)  # data lines, [DONE] included
    split_s = repeat(lambda: split_only(chunks), min_time=min_time).cpu_median
    parse_s = repeat(lambda: split_and_parse(chunks), min_time=min_time).cpu_median
    full = repeat(lambda: full_path(chunks), min_time=min_time)
    incremental_s = repeat(lambda: incremental_path(chunks), min_time=min_time).cpu_median
    return ParseRow(
        chars,
        step,
        lines,
        len(wire),
        split_s,
        parse_s,
        full.cpu_median,
        full.wall_median,
        incremental_s,
    )


# ------------------------------------------------------------------------- end to end


@dataclass
class E2ERow:
    chars: int
    step: int
    wire_bytes: int
    runs: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float

    def cells(self) -> list[object]:
        return [
            f"{self.chars:,}",
            f"{self.step:,}",
            f"{self.wire_bytes / MB:,.2f}",
            self.runs,
            f"{self.wall_s * 1000:,.1f}",
            f"{self.cpu_s * 1000:,.1f}",
            f"{self.server_cpu_s * 1000:,.0f}",
            f"{self.wire_bytes / MB / self.wall_s:,.0f}",
        ]


E2E_HEADERS = [
    "answer chars",
    "step",
    "wire MB",
    "runs",
    "wall ms/answer",
    "client CPU ms/answer",
    "server CPU ms/answer (mean)",
    "MB/s (wire, wall)",
]


async def _stream_once(client: GPTalkClient) -> str:
    parts = [delta async for delta in client.stream([{"role": "user", "content": "bench"}])]
    return "".join(parts)


async def _e2e(
    url: str, text: str, min_time: float, limit_s: float, server_pid: int
) -> tuple[int, float, float, float]:
    async with GPTalkClient(base_url=url, max_uses=1_000_000, read_timeout=limit_s) as client:
        async with asyncio.timeout(limit_s):
            if await _stream_once(client) != text:  # warm-up: login, connection
                raise AssertionError("end-to-end stream lost text")
            walls: list[float] = []
            cpus: list[float] = []
            server0 = process_cpu_seconds(server_pid)
            while len(walls) < 3 or sum(walls) < min_time:
                wall0, cpu0 = time.perf_counter(), time.process_time()
                got = await _stream_once(client)
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.process_time() - cpu0)
                if got != text:
                    raise AssertionError("end-to-end stream lost text")
            server_cpu = (process_cpu_seconds(server_pid) - server0) / len(walls)
    return len(walls), median(walls), median(cpus), server_cpu


def bench_e2e(chars: int, step: int, min_time: float, timeout: float = 120.0) -> E2ERow:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench._gptalk_server", "--chars", str(chars), "--step", str(step)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the fake GPTalk did not start (got {url!r})")
        runs, wall, cpu, server_cpu = asyncio.run(
            _e2e(url, markdown_answer(chars), min_time, timeout, server.pid)
        )
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the server exits when its stdin closes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    wire = len(wire_for(markdown_answer(chars), step))
    return E2ERow(chars, step, wire, runs, wall, cpu, server_cpu)


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_parser", description=__doc__)
    parser.add_argument("--sizes", type=_ints, default=[1_000, 10_000, 100_000])
    parser.add_argument("--steps", type=_ints, default=[8, 100, 10_000])
    parser.add_argument("--e2e-chars", type=int, default=100_000)
    parser.add_argument("--e2e-steps", type=_ints, default=[10_000, 1_000, 100])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the full path at the largest size/step"
    )
    args = parser.parse_args(argv)

    print(f"# bench_parser — {machine()}\n")
    print(
        f"Answers fed in {CHUNK // 1024} KiB chunks; median of ≥3 runs (≥{args.min_time} s); "
        "ms are process CPU time (wall time for comparison); the stage columns are "
        "medians of separate runs (split only; split+parse; full minus split+parse).\n"
    )
    rows = []
    for chars in args.sizes:
        for step in args.steps:
            if step > chars:
                continue
            rows.append(bench_parsing(chars, step, args.min_time))
            print(f"  … {chars} chars, step {step}: {rows[-1].full_s * 1000:.2f} ms", flush=True)
    print()
    print(table(PARSE_HEADERS, [row.cells() for row in rows]))
    print()

    if args.profile:
        chars, step = max(args.sizes), min(args.steps)
        chunks = chunked(wire_for(markdown_answer(chars), step))
        profiler = cProfile.Profile()
        profiler.runcall(full_path, chunks)
        print(f"cProfile of the full path, {chars} chars, step {step} (top 10 by tottime):\n")
        print("```")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(10)
        print("```\n")

    e2e = []
    for step in args.e2e_steps:
        e2e.append(bench_e2e(args.e2e_chars, step, args.min_time))
        print(f"  … end to end, step {step}: {e2e[-1].wall_s * 1000:.1f} ms", flush=True)
    print()
    print("End to end: GPTalkClient.stream ← FakeGPTalk (delay 0, separate process, loopback)\n")
    print(table(E2E_HEADERS, [row.cells() for row in e2e]))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
