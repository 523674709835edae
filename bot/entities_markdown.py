"""A user's message as plain Markdown, so the model sees the formatting they sent.

Telegram delivers code blocks, inline code, links and emphasis as entities beside
the text; ``message.text`` alone loses them (a pasted code block arrives without
fences). This rebuilds them as Markdown that a model reads naturally:

- ``pre`` → a fenced block (```` ```lang ```` … ```` ``` ````), on lines of its own;
- ``code`` → `` `code` ``;
- ``text_link`` → ``[text](url)``;
- ``bold`` → ``**…**``, ``italic`` → ``_…_``, ``strikethrough`` → ``~~…~~``
  (Telegram clients turn exactly these Markdown markers into entities, so the
  model sees what the user typed).

Every other character stays as the user typed it: nothing is escaped (aiogram's
``as_markdown`` escapes for MarkdownV2, which would show the model ``f\\(x\\)\\.``).
Underline, spoiler, blockquote, custom emoji and automatic entities (URLs,
mentions, hashtags) have no useful Markdown form and are left as plain text.

Offsets are UTF-16 code units, as Telegram counts them: the text is handled as a
string of UTF-16 units (see :func:`to_units`), so offsets index it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aiogram.types import MessageEntity

__all__ = ["from_units", "to_markdown", "to_units"]

_EMPHASIS = {"bold": "**", "italic": "_", "strikethrough": "~~"}
_VERBATIM = {"pre", "code"}  # nothing inside them is formatting
# For entities on the same span: the outer one first (a link around bold, bold
# around code), so the Markdown nests as Telegram displays it.
_RANK = {"text_link": 0, "bold": 1, "italic": 2, "strikethrough": 3, "pre": 4, "code": 5}


def to_units(text: str) -> str:
    """``text`` with every astral character split into its two UTF-16 surrogates,
    so that string indices are Telegram's offsets."""
    if text.isascii():
        return text
    out = []
    for char in text:
        point = ord(char)
        if point > 0xFFFF:
            point -= 0x10000
            out.append(chr(0xD800 + (point >> 10)) + chr(0xDC00 + (point & 0x3FF)))
        else:
            out.append(char)
    return "".join(out)


def from_units(units: str) -> str:
    """Back from :func:`to_units`; a surrogate left alone by a bad offset becomes U+FFFD."""
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@dataclass
class _Node:
    kind: str
    start: int
    end: int
    url: str | None = None
    language: str | None = None
    children: list[_Node] = field(default_factory=list)


def _tree(entities: Sequence[MessageEntity], size: int) -> list[_Node]:
    """The entities we render, as a properly nested tree. Telegram never sends
    partially overlapping entities; should one arrive, it stays plain text rather
    than producing broken Markdown."""
    nodes = []
    for entity in entities:
        if entity.type not in _RANK:
            continue
        start = max(0, entity.offset)
        end = min(size, entity.offset + entity.length)
        if start < end:
            nodes.append(_Node(entity.type, start, end, entity.url, entity.language))
    nodes.sort(key=lambda n: (n.start, -n.end, _RANK[n.kind]))
    roots: list[_Node] = []
    stack: list[_Node] = []
    for node in nodes:
        while stack and stack[-1].end <= node.start:
            stack.pop()
        parent = stack[-1] if stack else None
        if parent is not None and (parent.kind in _VERBATIM or node.end > parent.end):
            continue
        (parent.children if parent else roots).append(node)
        stack.append(node)
    return roots


def _fence(content: str, at_least: int) -> str:
    """A run of backticks longer than any inside ``content``."""
    longest = run = 0
    for char in content:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(at_least, longest + 1)


def _code(content: str) -> str:
    tick = _fence(content, 1)
    pad = " " if content.startswith("`") or content.endswith("`") else ""
    return f"{tick}{pad}{content}{pad}{tick}"


def _pre(content: str, language: str | None) -> str:
    fence = _fence(content, 3)
    newline = "" if content.endswith("\n") else "\n"
    return f"{fence}{language or ''}\n{content}{newline}{fence}"


def _emphasis(inner: str, marker: str) -> str:
    # "**bold **" is not bold in Markdown: the markers go around the words only.
    core = inner.strip()
    if not core:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()) :]
    return f"{lead}{marker}{core}{marker}{trail}"


def _render(units: str, start: int, end: int, nodes: list[_Node]) -> str:
    out: list[str] = []
    position = start
    for node in nodes:
        out.append(units[position : node.start])
        rendered = _render_node(units, node)
        if node.kind == "pre":
            # A fence only counts at the start of a line.
            before = "".join(out)
            if before and not before.endswith("\n"):
                rendered = "\n" + rendered
            if node.end < end and units[node.end] != "\n":
                rendered += "\n"
        out.append(rendered)
        position = node.end
    out.append(units[position:end])
    return "".join(out)


def _render_node(units: str, node: _Node) -> str:
    if node.kind == "pre":
        return _pre(units[node.start : node.end], node.language)
    if node.kind == "code":
        return _code(units[node.start : node.end])
    inner = _render(units, node.start, node.end, node.children)
    if node.kind == "text_link":
        return f"[{inner}]({node.url})" if node.url else inner
    return _emphasis(inner, _EMPHASIS[node.kind])


def to_markdown(text: str, entities: Sequence[MessageEntity] | None) -> str:
    """``text`` with its formatting ``entities`` written as Markdown (see the module)."""
    if not entities:
        return text
    units = to_units(text)
    return from_units(_render(units, 0, len(units), _tree(entities, len(units))))
