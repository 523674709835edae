"""A TCP link to a real Redis that holds the answer to one chosen command until the test
lets it go: a replica caught in the middle of that one await, every other command
flowing as usual.

The request goes through at once (Redis runs it, and the test may see its effect);
what Redis answers on that connection from then on is held until :meth:`Hold.release`.
The command is told by its RESP bytes (:func:`resp`), e.g. ``resp("SADD", key)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any

from tests.relay import Relay

__all__ = ["HeldLink", "Hold", "resp"]


def resp(*words: str) -> bytes:
    """The start of a command as redis-py writes it (after the array header)."""
    return b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)


class Hold:
    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.reached = asyncio.Event()  # the command was sent on to Redis; its answer is held
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait_released(self) -> None:
        await self._released.wait()


class HeldLink(Relay):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self._holds: list[Hold] = []

    def hold(self, marker: bytes) -> Hold:
        """Hold the answer to the next command that contains ``marker`` (once)."""
        hold = Hold(marker)
        self._holds.append(hold)
        return hold

    async def aclose(self) -> None:
        for hold in self._holds:
            hold.release()
        await super().aclose()

    def pumps(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> Iterable[Coroutine[Any, Any, None]]:
        # The holds met on this connection: its answers wait for each one's release.
        met: list[Hold] = []
        return (self._requests(client[0], server[1], met), self._answers(server[0], client[1], met))

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, met: list[Hold]
    ) -> None:
        tail = b""  # a marker may straddle two reads
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                seen = tail + data
                for hold in [h for h in self._holds if h.marker in seen]:
                    # Before the request goes on: its answer must not slip through.
                    self._holds.remove(hold)
                    met.append(hold)
                    hold.reached.set()
                longest = max((len(h.marker) for h in self._holds), default=1)
                tail = seen[-(longest - 1) :] if longest > 1 else b""
                writer.write(data)
                await writer.drain()
        writer.close()

    @staticmethod
    async def _answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, met: list[Hold]
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for hold in met:
                    await hold.wait_released()
                writer.write(data)
                await writer.drain()
        writer.close()
