"""Parsing GPTalk's answer stream: pure functions over bytes, no I/O.

The stream is a sequence of lines; ``data: {"content": "<all text so far>"}``
lines carry the *cumulative* answer, ``data: [DONE]`` ends it, anything else is
ignored. Because the content is cumulative, lines grow with the answer (a
100,000-character answer means 100 KB lines), so lines are assembled from
chunks here instead of with aiohttp's size-limited ``readline``, and
:class:`StreamDecoder` decodes only what each line adds to the previous one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from json import decoder as _json_decoder
from typing import Final

from .errors import ProtocolError, excerpt

__all__ = ["DONE", "DeltaDecoder", "LineSplitter", "StreamDecoder", "parse_data_line"]

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
    when a data line is not the expected JSON; the line (part of a possibly private
    answer) is on its ``excerpt``, not in its message, which ends up in logs.
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
            f"malformed data line ({len(line)} chars)", excerpt=excerpt(line), endpoint="stream"
        ) from exc
    if not isinstance(content, str):
        raise ProtocolError(
            f"data line without text content ({len(line)} chars)",
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


# A data line as GPTalk writes it: the object's one key, "content", first.
_HEAD: Final = re.compile(rb'data: \{[ \t\n\r]*"content"[ \t\n\r]*:[ \t\n\r]*"')
_TAIL: Final = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*\Z")
_ESCAPE_LEN: Final = len(b"\\ud83d")
# The string scanner json.loads itself uses (C-accelerated); typeshed does not list it.
_scanstring: Callable[[str, int], tuple[str, int]] = _json_decoder.scanstring  # type: ignore[attr-defined]


class StreamDecoder:
    """Lines of the stream in, deltas out, in time linear in the answer.

    Gives the same results as :func:`parse_data_line` followed by
    :class:`DeltaDecoder` (deltas, :data:`DONE`, ``None`` and errors alike), but when a
    line starts with the very bytes of the previous one up to where its text ended,
    only the bytes after that point are decoded: the prefix is compared (a memcmp),
    not parsed again. The one place a shared prefix could decode differently is an
    escaped high surrogate at its end (``\\ud83d``, pairing with a ``\\ude00`` that
    follows), so the shared part stops before one. Lines of another shape are
    parsed in full.
    """

    def __init__(self) -> None:
        self.length = 0
        """Characters of the cumulative content so far."""
        # The bytes the next line must start with to take the shortcut: a view of the
        # previous line, not a copy (a copy per line would cost as much as the compare).
        self._prefix: bytes | memoryview = b""
        self._prefix_chars = 0  # characters of content that _prefix holds

    def feed(self, raw: bytes) -> str | object | None:
        """``None`` for a line to ignore, :data:`DONE` at the end, else the new text
        (possibly empty). Raises :class:`ProtocolError` for a malformed data line."""
        if self._prefix and raw.startswith(self._prefix):
            parsed = _text_from(raw, len(self._prefix))
            if parsed is not None:
                new, text_end = parsed
                delta = new[self.length - self._prefix_chars :]
                self._advance(raw, self._prefix_chars, new, text_end)
                return delta
        head = _HEAD.match(raw)
        if head is not None:
            parsed = _text_from(raw, head.end())
            if parsed is not None:
                content, text_end = parsed
                delta = content[self.length :]
                self._advance(raw, 0, content, text_end)
                return delta
        item = parse_data_line(raw)  # anything else, errors included, as it always was
        if isinstance(item, str):
            delta = item[self.length :]
            self.length = len(item)
            self._prefix, self._prefix_chars = b"", 0
            return delta
        return item

    def _advance(self, raw: bytes, known_chars: int, new: str, text_end: int) -> None:
        self.length = known_chars + len(new)
        end, chars = text_end, self.length
        if new and "\ud800" <= new[-1] <= "\udbff":
            end, chars = end - _ESCAPE_LEN, chars - 1
        if not (known_chars and end == len(self._prefix)):  # else: the same bytes
            self._prefix = memoryview(raw)[:end]
        self._prefix_chars = chars


def _text_from(raw: bytes, start: int) -> tuple[str, int] | None:
    """Decode the JSON string that continues at ``raw[start]`` up to a closing ``"}``;
    return it and the byte offset of its closing quote, or None if the line does not
    end that way."""
    try:
        rest = raw[start:].decode("utf-8")
        text, end = _scanstring(rest, 0)  # strict, as json.loads
    except ValueError:  # UnicodeDecodeError and JSONDecodeError
        return None
    if not _TAIL.match(rest, end):
        return None
    # Everything after the closing quote is ASCII, so bytes and characters agree there.
    return text, len(raw) - (len(rest) - end) - 1
