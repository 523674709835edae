"""``python -m bot`` in webhook mode as a real process: its environment, its start, and
what the tests read from it (health, Prometheus metrics, the addresses it listens on)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from pathlib import Path

import aiohttp

from tests.bot_process import bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

__all__ = [
    "PATH",
    "SECRET",
    "free_port",
    "get",
    "launch",
    "listening_addresses",
    "metric",
    "raw_post",
    "wait_ready",
    "webhook_env",
]

SECRET = "webhook-s3cret_XYZ"
PATH = "/tg/hook"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def webhook_env(
    tg: FakeTelegram,
    gptalk: FakeGPTalk,
    port: int,
    *,
    health_port: int,
    url: str | None = None,
    **settings: str,
) -> dict[str, str]:
    """A replica serving ``PATH`` on ``port`` and its health endpoints on ``health_port``
    (``HEALTH_HOST``: the default, 127.0.0.1); ``url`` is the public one it registers
    (default: its own address)."""
    return bot_env(
        tg,
        gptalk,
        WEBHOOK_URL=url or f"http://127.0.0.1:{port}{PATH}",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_HOST="127.0.0.1",
        WEBHOOK_PORT=str(port),
        HEALTH_PORT=str(health_port),
        **settings,
    )


async def get(
    http: aiohttp.ClientSession, port: int, path: str, *, host: str = "127.0.0.1"
) -> tuple[int, str]:
    async with http.get(f"http://{host}:{port}{path}") as response:
        return response.status, await response.text()


async def wait_ready(
    http: aiohttp.ClientSession,
    port: int,
    timeout: float = 30,  # noqa: ASYNC109
    *,
    host: str = "127.0.0.1",
) -> None:
    """Until ``/readyz`` on the health listener ``host:port`` answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if (await get(http, port, "/readyz", host=host))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"replica on port {port} not ready")
        await asyncio.sleep(0.1)


async def launch(
    procs: list[asyncio.subprocess.Process],
    http: aiohttp.ClientSession,
    env: dict[str, str],
    workdir: Path,
) -> asyncio.subprocess.Process:
    """Started, and ready on its ``HEALTH_PORT``."""
    proc = await start_bot(env, workdir)
    procs.append(proc)
    await wait_ready(http, int(env["HEALTH_PORT"]))
    return proc


async def raw_post(port: int, path: str, headers: dict[bytes, bytes], body: bytes) -> int:
    """POST exactly these bytes (aiohttp's client would refuse some, such as a header
    that is not UTF-8); the response's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (Linux's /proc/net:
    who listens, whatever process it is)."""
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if sys.byteorder == "little":  # each 32-bit word is in the host's order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
