"""A TCP link to a real server whose answers arrive late: a replica far from its Redis.

Requests go through at once; every byte the server sends is held ``delay`` seconds,
in order. So a command still runs when it is sent, but the client learns its result,
and any pub/sub message, only ``delay`` later: races between a near and a far replica
play out the same way every time.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["SlowLink"]


class SlowLink:
    def __init__(self, port: int, delay: float) -> None:
        self._port, self._delay = port, delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> SlowLink:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers.update((writer, upstream_writer))
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        for pump in (
            self._pump(reader, upstream_writer),
            self._hold(upstream_reader, held),
            self._release(held, writer),
        ):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
