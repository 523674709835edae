"""Model Markdown → what Telegram will show: text + entities, trimmed and split.

Telegram measures text in UTF-16 code units, trims outer whitespace of every
message, and takes at most 4096 units per message. Everything here is pure and
works on :class:`Rendered` values, so the streaming editor can compare exactly
what Telegram would store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import pyromark
import telegramify_markdown
from aiogram.types import MessageEntity

__all__ = ["MAX_MESSAGE_UNITS", "Entity", "Rendered", "cut_ranges", "render", "split", "utf16_len"]

MAX_MESSAGE_UNITS: Final = 4096


def utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True)
class Entity:
    """A formatting entity with offsets in UTF-16 units, as Telegram counts."""

    type: str
    offset: int
    length: int
    extra: tuple[tuple[str, Any], ...] = ()  # url, language, …

    def to_aiogram(self) -> MessageEntity:
        return MessageEntity(
            type=self.type, offset=self.offset, length=self.length, **dict(self.extra)
        )


@dataclass(frozen=True)
class Rendered:
    """Message text and its entities."""

    text: str
    entities: tuple[Entity, ...] = field(default=())

    def aiogram_entities(self) -> list[MessageEntity] | None:
        return [entity.to_aiogram() for entity in self.entities] or None

    def plain(self) -> Rendered:
        return Rendered(self.text)

    def slice(self, start: int, end: int) -> Rendered:
        """The part of the text between Python indices ``start`` and ``end``; entities
        crossing either edge are clipped (closed here, reopened in the neighbour)."""
        lo, hi = utf16_len(self.text[:start]), utf16_len(self.text[:end])
        entities = []
        for entity in self.entities:
            first, last = max(entity.offset, lo), min(entity.offset + entity.length, hi)
            if first < last:
                entities.append(Entity(entity.type, first - lo, last - first, entity.extra))
        return Rendered(self.text[start:end], tuple(entities))

    def trimmed(self) -> Rendered:
        """What Telegram stores: outer whitespace removed, entities shifted and clipped."""
        text = self.text
        start = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        if start == 0 and end == len(text):
            return self
        if start >= end:
            return Rendered("")
        return self.slice(start, end)

    @property
    def units(self) -> int:
        return utf16_len(self.text)


# As telegramify-markdown parses (tables, strikethrough, task lists, math).
_OPTIONS = (
    pyromark.Options.ENABLE_TABLES
    | pyromark.Options.ENABLE_STRIKETHROUGH
    | pyromark.Options.ENABLE_TASKLISTS
    | pyromark.Options.ENABLE_MATH
)
# Where CommonMark may see a tag, a comment or a processing instruction.
_TAG_START = re.compile(r"<[A-Za-z/!?]")


def _html_as_text(markdown: str) -> str:
    """Escape the ``<`` of every raw HTML tag, so that it shows as written.

    Telegram cannot show HTML from Markdown and telegramify-markdown drops it, so
    ``List<String>`` would reach the user as ``List``. Code spans and blocks are
    not HTML and stay as they are. An HTML block, once escaped, is a paragraph
    whose inner tags are inline HTML: hence another round.
    """
    again = True
    while again and _TAG_START.search(markdown):
        source, starts, again = markdown.encode(), set(), False
        for event, where in pyromark.events_with_range(markdown, options=_OPTIONS):
            if isinstance(event, dict) and ("InlineHtml" in event or "Html" in event):
                start = source.find(b"<", where["start"], where["end"])
                if start >= 0:
                    starts.add(start)
                    again = again or "Html" in event
        for start in sorted(starts, reverse=True):
            source = source[:start] + b"\\" + source[start:]
        markdown = source.decode()
    return markdown


def render(markdown: str) -> Rendered:
    """Render the model's Markdown (possibly half-written) to text + entities.

    Tables become an aligned monospace block (telegramify-markdown draws them in a
    ``pre`` entity); raw HTML tags are shown as text (:func:`_html_as_text`).
    """
    text, entities = telegramify_markdown.convert(_html_as_text(markdown))
    converted = []
    for entity in entities:
        data = entity.to_dict()
        kind, offset, length = data.pop("type"), data.pop("offset"), data.pop("length")
        converted.append(Entity(kind, offset, length, tuple(sorted(data.items()))))
    return Rendered(text, tuple(converted)).trimmed()


def split(rendered: Rendered, limit: int = MAX_MESSAGE_UNITS) -> list[Rendered]:
    """Split into messages of at most ``limit`` UTF-16 units, each trimmed and non-empty."""
    parts = (rendered.slice(start, end).trimmed() for start, end in cut_ranges(rendered, limit))
    return [part for part in parts if part.text]


def cut_ranges(rendered: Rendered, limit: int = MAX_MESSAGE_UNITS) -> list[tuple[int, int]]:
    """Python index ranges covering ``rendered.text`` whose trimmed contents fit ``limit``.

    Cuts at the last paragraph break that fits, else the last line break, else the
    last space, else at the limit (never inside a surrogate pair: Python indexes
    code points). Entities crossing a cut are closed and reopened by
    :meth:`Rendered.slice`.
    """
    text, ranges, start = rendered.text, [], 0
    while start < len(text):
        lead = len(text) - start - len(text[start:].lstrip())
        body = text[start + lead :]
        if utf16_len(body.rstrip()) <= limit:
            ranges.append((start, len(text)))
            break
        end = start + lead + _cut_point(body, limit)
        ranges.append((start, end))
        start = end
    return ranges


def _cut_point(text: str, limit: int) -> int:
    """The Python index to cut ``text`` at so that the head fits in ``limit`` units."""
    fits = _prefix_fitting(text, limit)
    window = text[:fits]
    # A boundary in the first quarter would leave a stub message: prefer a weaker
    # boundary later on.
    floor = fits // 4
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > floor:
            return at + len(separator)
    return fits


def _prefix_fitting(text: str, limit: int) -> int:
    """The largest n such that text[:n] takes at most ``limit`` UTF-16 units."""
    if text.isascii():
        return min(len(text), limit)
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)
