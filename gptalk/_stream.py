"""Parsing GPTalk's answer stream: pure functions over bytes, no I/O.

The stream is a sequence of lines; ``data: {"content": "<all text so far>"}``
lines carry the *cumulative* answer, ``data: [DONE]`` ends it, anything else is
ignored. Because the content is cumulative, lines grow with the answer (a
100,000-character answer means 100 KB lines), so lines are assembled from
chunks here instead of with aiohttp's size-limited ``readline``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Final

from .errors import ProtocolError, excerpt

__all__ = ["DONE", "DeltaDecoder", "LineSplitter", "parse_data_line"]

DATA_PREFIX: Final = "data: "
DONE: Final = object()
"""Sentinel returned by :func:`parse_data_line` for ``data: [DONE]``."""


class LineSplitter:
    """Split a byte stream into lines, in linear time whatever the line length.

    Pieces of an unfinished line are kept in a list and joined once, when its
    newline arrives, so a long line fed in many small chunks costs no repeated
    copying.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every line completed by ``chunk``, without its line ending."""
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            piece = chunk[start:end]
            if self._pending:
                self._pending.append(piece)
                piece = b"".join(self._pending)
                self._pending.clear()
            yield piece.removesuffix(b"\r")
            start = end + 1
        if start < len(chunk):
            self._pending.append(chunk[start:])

    def flush(self) -> bytes | None:
        """Return the unterminated last line, if the stream ended inside one."""
        if not self._pending:
            return None
        line = b"".join(self._pending).removesuffix(b"\r")
        self._pending.clear()
        return line


def parse_data_line(raw: bytes) -> str | object | None:
    """Interpret one line of the stream.

    Returns ``None`` for lines to ignore, :data:`DONE` for the end marker, and the
    cumulative content (a ``str``) for a data line. Raises :class:`ProtocolError`
    when a data line is not the expected JSON.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            "stream line is not valid UTF-8",
            excerpt=excerpt(raw.decode("utf-8", "replace")),
            endpoint="stream",
        ) from exc
    if not line.startswith(DATA_PREFIX):
        return None
    payload = line[len(DATA_PREFIX) :]
    if payload == "[DONE]":
        return DONE
    try:
        content = json.loads(payload)["content"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtocolError(
            f"malformed data line: {excerpt(line)!r}", excerpt=excerpt(line), endpoint="stream"
        ) from exc
    if not isinstance(content, str):
        raise ProtocolError(
            f"data line without text content: {excerpt(line)!r}",
            excerpt=excerpt(line),
            endpoint="stream",
        )
    return content


class DeltaDecoder:
    """Turn cumulative contents into deltas: each call returns only the new suffix."""

    def __init__(self) -> None:
        self.text = ""

    def delta(self, content: str) -> str:
        new = content[len(self.text) :]
        self.text = content
        return new
