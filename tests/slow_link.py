"""A TCP link to a real server whose answers arrive late: a replica far from its Redis.

Requests go through at once; every byte the server sends is held ``delay`` seconds,
in order. So a command still runs when it is sent, but the client learns its result,
and any pub/sub message, only ``delay`` later: races between a near and a far replica
play out the same way every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any

from tests.relay import Relay

__all__ = ["SlowLink"]


class SlowLink(Relay):
    def __init__(self, port: int, delay: float) -> None:
        super().__init__(port)
        self._delay = delay

    def pumps(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> Iterable[Coroutine[Any, Any, None]]:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        return (
            self._pump(client[0], server[1]),
            self._hold(server[0], held),
            self._release(held, client[1]),
        )

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _hold(
        self, reader: asyncio.StreamReader, held: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                held.put_nowait((loop.time() + self._delay, data))
        held.put_nowait((loop.time() + self._delay, b""))

    @staticmethod
    async def _release(
        held: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()
