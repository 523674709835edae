"""Private, throw-away redis-server processes (tests and benchmarks), never a shared one."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis as redis_sync

__all__ = ["RedisStartError", "free_port", "start_redis", "stop_process"]

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


def start_redis(exe: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free loopback port, without persistence; return it once
    PING answers. Raises :class:`RedisStartError` with its log otherwise."""
    log_path = workdir / "redis-server.log"
    problems: list[str] = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        cmd = [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        with log_path.open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        client = redis_sync.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
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
