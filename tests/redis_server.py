"""Private, throw-away redis-server processes (tests and benchmarks), never a shared one."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis as redis_sync

__all__ = ["RedisStartError", "free_port", "start_redis", "start_sentinel", "stop_process"]

START_TIMEOUT = 10.0
START_ATTEMPTS = 3


class RedisStartError(Exception):
    """redis-server did not come up; the message carries its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_redis(
    exe: str, workdir: Path, args: Sequence[str] = (), *, password: str | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free loopback port, without persistence; return it once
    PING answers. ``args`` are more options (``--replicaof …``); ``password`` is the
    one PING needs. Raises :class:`RedisStartError` with its log otherwise."""

    def command(port: int) -> list[str]:
        return [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            *args,
        ]  # fmt: skip

    return _start(command, workdir, workdir / "redis-server.log", password)


def start_sentinel(
    exe: str, workdir: Path, config: Sequence[str], *, password: str | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``redis-server --sentinel`` on a free loopback port with the lines of
    ``config`` (``sentinel monitor …``) in its own sentinel.conf, which it rewrites."""
    conf = workdir / "sentinel.conf"

    def command(port: int) -> list[str]:
        conf.write_text(
            "\n".join([f"port {port}", "bind 127.0.0.1", f"dir {workdir}", *config]) + "\n"
        )
        return [exe, str(conf), "--sentinel"]

    return _start(command, workdir, workdir / "sentinel.log", password)


def _start(
    command: Callable[[int], list[str]], workdir: Path, log_path: Path, password: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    problems: list[str] = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                command(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )
        client = redis_sync.Redis(
            host="127.0.0.1",
            port=port,
            password=password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return proc, port
                except redis_sync.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        code = proc.poll()
        stop_process(proc)
        if code is None:
            problems.append(f"port {port}: no PING answer within {START_TIMEOUT} s")
            break  # a hang will not get better on another port
        problems.append(f"port {port}: redis-server exited with code {code}")
    log_text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    raise RedisStartError(
        "could not start a private redis-server: "
        + "; ".join(problems)
        + f"\n--- {log_path} ---\n{log_text}"
    )
