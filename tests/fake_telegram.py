"""A strict in-process fake of the Telegram Bot API, built on ``aiohttp.web``.

Point a real aiogram ``Bot`` at it::

    fake = FakeTelegram(time_scale=0.05)
    await fake.start()
    bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.url)))

The fake answers like Telegram: ``{"ok": true, "result": ...}`` on success and
``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}`` with HTTP status
``N`` on failure, so aiogram raises its usual exceptions (``TelegramBadRequest``,
``TelegramRetryAfter``, ``TelegramForbiddenError``, ``TelegramConflictError``...). It is strict on
purpose: a bot bug (an edit that changes nothing, an entity past the end of the text, a text
over 4096 UTF-16 code units, too many messages per second) comes back as an error instead of
being silently accepted.

Time scaling
------------
Every duration inside the fake runs on a *fake clock* measured in fake seconds::

    fake seconds = real monotonic seconds elapsed since the fake was created / time_scale

So with ``time_scale=0.1`` one real second is ten fake seconds: a 60 s group window lasts 6 real
seconds, the private-chat bucket refills ``private_rate`` tokens per *fake* second, and a
``getUpdates`` long poll with ``timeout=10`` waits at most ``10 * 0.1 = 1`` real second.
Everything the fake reports is in fake seconds: ``retry_after`` of a 429, :attr:`Call.at` and
:meth:`FakeTelegram.now`. The bot under test must therefore run with the same scale (sleep
``retry_after * time_scale`` real seconds). ``time_scale=1.0`` (the default) is real time.
:meth:`FakeTelegram.wait_for` takes its ``timeout`` in *real* seconds.

Text processing (what Telegram stores)
--------------------------------------
``sendMessage``/``editMessageText`` texts go through the same steps as in Telegram (tdlib's
``fix_formatted_text``): control characters other than ``\\n`` (including ``\\t``) become
spaces; ``\\r`` and U+2028..U+202E are removed; entities are sorted, same-type formatting
entities that overlap or touch are merged, partially overlapping non-formatting entities are
dropped, formatting inside ``pre``/``code`` is dropped; entities lose their leading spaces and
newlines and whitespace-only entities disappear (except ``text_link``/``text_mention``/
``custom_emoji``); then the text is right-trimmed and left-trimmed of spaces and newlines, entity
offsets shifted and clipped accordingly. Lengths are counted in UTF-16 code units after all that.
Not emulated: auto-detected entities (Telegram adds ``url``, ``mention``, ``hashtag``... entities
it finds in the text; the fake does not) and the 100-entity cap.
Stricter than Telegram: ``entities`` together with ``parse_mode`` is an error (Telegram silently
ignores ``entities`` then). With ``parse_mode`` the fake runs a small HTML / MarkdownV2 / Markdown
parser that reports Telegram-like "can't parse entities" errors.

Updates
-------
``getUpdates`` behaves like Telegram's: updates with ``update_id < offset`` are dropped when
``offset > 0`` (a negative offset keeps only the last ``-offset`` updates), ``limit`` is clamped to
1..100 and ``timeout`` to 0..50. ``allowed_updates`` is remembered and filters updates *when they
are queued* (an update of another type pushed later is dropped, see :attr:`dropped_updates`);
the default excludes ``chat_member``, ``message_reaction`` and ``message_reaction_count``.
Like Telegram, a new long poll terminates the pending one: the *earlier* request gets
``409 Conflict: terminated by other getUpdates request; ...`` and the new one waits. A client that
disconnects (aiogram's ``stop_polling`` cancels its request) ends its long poll at once.

The fake delivers every group message (as if privacy mode were off or the bot an admin).

Chat members
------------
``getChatMember`` and ``getChatAdministrators`` answer from what tests declare with
:meth:`FakeTelegram.set_member` (``creator``, ``administrator``, ``member``, ``restricted``,
``left``, ``kicked``), in Telegram's shapes (``ChatMemberOwner``, ``ChatMemberAdministrator``...).
Undeclared, a user who wrote in a group is a ``member`` there and one who never did is ``left``;
the bot is a ``member`` (``restricted`` after :meth:`FakeTelegram.restrict_bot`). A user the fake
has never seen is ``400 Bad Request: user not found`` (Telegram's answer for a user the bot has
never met); Telegram's sporadic ``PARTICIPANT_ID_INVALID`` (:data:`PARTICIPANT_ID_INVALID`) is
for :meth:`FakeTelegram.fail_next`. Every call is recorded (``calls_to("getChatMember")``).

Webhooks
--------
``setWebhook`` registers a URL (with ``secret_token`` and ``allowed_updates``; ``getWebhookInfo``
reports them, ``drop_pending_updates`` clears the queue) and from then on ``getUpdates`` fails
with 409 like Telegram's. While a webhook is set and :attr:`FakeTelegram.deliver` is true, queued
updates are POSTed to it one at a time, in order, as JSON with the
``X-Telegram-Bot-Api-Secret-Token`` header; an update is removed from the queue on a 2xx answer
and retried after ``webhook_retry`` fake seconds otherwise (every attempt is recorded in
:attr:`FakeTelegram.deliveries`). Tests may also POST an update themselves with
:meth:`FakeTelegram.post_update` (to any URL, with any secret).

Run it by hand::

    python -m tests.fake_telegram --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import aiohttp
from aiohttp import web

__all__ = [
    "BAD_GATEWAY_HTML",
    "MAX_MESSAGE_LENGTH",
    "MIGRATED",
    "NOT_MODIFIED",
    "NO_RIGHTS",
    "PARTICIPANT_ID_INVALID",
    "TOPIC_CLOSED",
    "USER_NOT_FOUND",
    "Call",
    "Draft",
    "FakeTelegram",
    "StoredMessage",
]

MAX_MESSAGE_LENGTH: Final = 4096
MIGRATED: Final = "Bad Request: group chat was upgraded to a supergroup chat"
NO_RIGHTS: Final = "Bad Request: not enough rights to send text messages to the chat"
TOPIC_CLOSED: Final = "Bad Request: TOPIC_CLOSED"
USER_NOT_FOUND: Final = "Bad Request: user not found"
# What Telegram answers now and then for a member it would otherwise call "left"
# (tdlib/telegram-bot-api#802); the fake answers it only through fail_next.
PARTICIPANT_ID_INVALID: Final = "Bad Request: PARTICIPANT_ID_INVALID"
BAD_GATEWAY_HTML: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
CONFLICT: Final = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
    "running"
)
WEBHOOK_CONFLICT: Final = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)
SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")

# canonical names of the methods the fake implements, by lower-case name
_METHODS: Final[dict[str, str]] = {
    name.lower(): name
    for name in (
        "getMe",
        "getUpdates",
        "deleteWebhook",
        "getWebhookInfo",
        "setWebhook",
        "sendMessage",
        "editMessageText",
        "sendChatAction",
        "deleteMessage",
        "setMyCommands",
        "deleteMyCommands",
        "getMyCommands",
        "getChat",
        "getChatMember",
        "getChatAdministrators",
        "answerCallbackQuery",
        "sendMessageDraft",
    )
}
# methods that create or edit messages: these count against the rate limits. Reads (getMe,
# getChat, getChatMember, getChatAdministrators) do not: Telegram documents its flood limits
# for sending messages only, and reads are not known to count. That is an assumption: if they
# did, a burst of them would answer 429 here too.
_RATE_LIMITED: Final = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})

_JSON_FIELDS: Final = frozenset(
    {
        "entities",
        "caption_entities",
        "reply_parameters",
        "commands",
        "scope",
        "allowed_updates",
        "reply_markup",
        "link_preview_options",
    }
)
_INT_FIELDS: Final = frozenset(
    {
        "chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "offset",
        "limit",
        "timeout",
        "user_id",
        "cache_time",
        "draft_id",
    }
)
_BOOL_FIELDS: Final = frozenset(
    {
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "allow_paid_broadcast",
        "drop_pending_updates",
        "disable_web_page_preview",
        "show_alert",
        "can_stop",
        "keep_on_stop",
        "return_bots",
    }
)

_ALL_UPDATE_TYPES: Final = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "message_reaction",
        "message_reaction_count",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
        "stopped_message_generation",
    }
)
_DEFAULT_UPDATE_TYPES: Final = _ALL_UPDATE_TYPES - {
    "chat_member",
    "message_reaction",
    "message_reaction_count",
}

_CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

_SCOPES_WITHOUT_CHAT: Final = frozenset(
    {"default", "all_private_chats", "all_group_chats", "all_chat_administrators"}
)

_MEMBER_STATUSES: Final = frozenset(
    {"creator", "administrator", "member", "restricted", "left", "kicked"}
)
_ADMIN_STATUSES: Final = frozenset({"creator", "administrator"})
_RESTRICTED_RIGHTS: Final = (
    "can_send_messages",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_react_to_messages",
    "can_edit_tag",
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_manage_topics",
)

_LONG_POLL_MAX_TIMEOUT: Final = 50
_FORUM_ICON_COLOR: Final = 7322096


# --------------------------------------------------------------------------------------------
# public records


@dataclass
class Call:
    """One recorded API call (successful or not)."""

    method: str
    """Canonical camelCase name (``"editMessageText"``); as sent for unknown methods."""
    params: dict[str, Any]
    """Decoded parameters: JSON fields decoded, known integer/boolean fields converted."""
    at: float
    """Fake-clock time the call arrived, in fake seconds."""
    ok: bool
    error_code: int | None = None
    description: str | None = None


@dataclass
class StoredMessage:
    """A message as the fake stores it (user's or bot's)."""

    chat_id: int
    message_id: int
    text: str
    entities: list[dict[str, Any]]
    from_bot: bool
    thread_id: int | None
    reply_to: int | None
    date: int
    edits: int = 0
    """Successful edits."""
    history: list[str] = field(default_factory=list)
    """Every text the message had, in order (the current one last)."""
    deleted: bool = False
    """Deleted by the bot (``deleteMessage``) or the user (:meth:`FakeTelegram.delete_message`)."""
    reply_markup: dict[str, Any] | None = None
    """The inline keyboard attached to the message, if any."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The Message object as Telegram would return it now (without ``reply_to_message``)."""


@dataclass
class Draft:
    """One accepted ``sendMessageDraft`` (a streamed preview, not a message)."""

    chat_id: int
    draft_id: int
    text: str
    entities: list[dict[str, Any]]
    can_stop: bool
    at: float
    """Fake-clock time, in fake seconds."""


# --------------------------------------------------------------------------------------------
# errors


class _ApiError(Exception):
    def __init__(
        self,
        code: int,
        description: str,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        html: str | None = None,
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id
        self.html = html  # a gateway's page instead of Bot API JSON


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


class _EntityError(Exception):
    """A problem with entities or with parse_mode markup (the reason after "can't parse...")."""


class _EmptyTextError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# formatted text


_SPLITTABLE: Final = ("bold", "italic", "underline", "strikethrough", "spoiler")
_BLOCKQUOTES: Final = frozenset({"blockquote", "expandable_blockquote"})
_PRE_LIKE: Final = frozenset({"pre", "code"})
_HIDDEN_DATA: Final = frozenset({"text_link", "text_mention", "custom_emoji"})
_ENTITY_TYPES: Final = frozenset(
    {
        "mention",
        "hashtag",
        "cashtag",
        "bot_command",
        "url",
        "email",
        "phone_number",
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "blockquote",
        "expandable_blockquote",
        "code",
        "pre",
        "text_link",
        "text_mention",
        "custom_emoji",
    }
)
# tdlib's sort priorities (lower sorts first among entities with the same offset and length)
_PRIORITY: Final[dict[str, int]] = {
    "blockquote": 0,
    "expandable_blockquote": 1,
    "pre": 11,
    "code": 20,
    "text_link": 49,
    "text_mention": 49,
    "bold": 90,
    "italic": 91,
    "underline": 92,
    "strikethrough": 93,
    "spoiler": 94,
    "custom_emoji": 99,
}
_WHITESPACE: Final = " \n"
_REMOVED_CHARS: Final = frozenset("\r\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u0333\u033f\u030a")
_URL_RE: Final = re.compile(
    r"^(?:(?:https?|tg|ton)://\S+|(?:[\w-]+\.)+[a-z]{2,}(?::\d+)?(?:[/?#]\S*)?)$",
    re.IGNORECASE,
)


def _width(ch: str) -> int:
    """UTF-16 code units of one character."""
    return 2 if ord(ch) > 0xFFFF else 1


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (what Telegram counts)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class _Entity:
    type: str
    offset: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def sort_key(self) -> tuple[int, int, int]:
        priority = _PRIORITY.get(self.type, 50)
        if self.type == "pre" and self.extra.get("language"):
            priority = 10
        return (self.offset, -self.length, priority)

    def copy(self, offset: int, length: int) -> _Entity:
        return _Entity(self.type, offset, length, dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"type": self.type, "offset": self.offset, "length": self.length}
        result.update(self.extra)
        return result


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entity_list(raw: Any) -> list[_Entity]:
    """Validate the ``entities`` parameter (already JSON-decoded)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _EntityError("entities must be an Array of MessageEntity")
    result: list[_Entity] = []
    for index, item in enumerate(raw):
        where = f"entity #{index}"
        if not isinstance(item, dict):
            raise _EntityError(f"{where} is not an object")
        kind = item.get("type")
        if not isinstance(kind, str):
            raise _EntityError(f'{where}: field "type" must be a String')
        if kind not in _ENTITY_TYPES:
            raise _EntityError(f'{where}: unsupported entity type "{kind}"')
        offset, length = item.get("offset"), item.get("length")
        if not _is_int(offset) or not _is_int(length):
            raise _EntityError(f'{where}: fields "offset" and "length" must be Integers')
        if offset < 0:
            raise _EntityError(f"{where}: receive an entity with incorrect offset {offset}")
        if length < 0:
            raise _EntityError(f"{where}: receive an entity with incorrect length {length}")
        extra: dict[str, Any] = {}
        if kind == "text_link":
            url = item.get("url")
            if not isinstance(url, str) or not url.strip():
                raise _EntityError(f"{where}: text_link entity must have a non-empty url")
            url = url.strip()
            if not _URL_RE.match(url):
                raise _EntityError(f'{where}: wrong HTTP URL "{url}"')
            if "://" not in url:
                url = "http://" + url
            extra["url"] = url
        elif kind == "text_mention":
            user = item.get("user")
            if not isinstance(user, dict) or not _is_int(user.get("id")):
                raise _EntityError(f"{where}: text_mention entity must have a user with an id")
            extra["user"] = user
        elif kind == "custom_emoji":
            emoji_id = item.get("custom_emoji_id")
            if not isinstance(emoji_id, str) or not emoji_id.isdigit():
                raise _EntityError(f"{where}: custom_emoji entity must have a custom_emoji_id")
            extra["custom_emoji_id"] = emoji_id
        elif kind == "pre":
            language = item.get("language")
            if language is not None and not isinstance(language, str):
                raise _EntityError(f'{where}: field "language" must be a String')
            if language:
                extra["language"] = language
        result.append(_Entity(kind, offset, length, extra))
    return result


def _clean(text: str) -> tuple[str, dict[int, int]]:
    """Telegram's clean_input_string: returns the text and old->new UTF-16 boundary map."""
    out: list[str] = []
    remap: dict[int, int] = {}
    old = new = 0
    for ch in text:
        remap[old] = new
        width = _width(ch)
        old += width
        if ch in _REMOVED_CHARS:
            continue
        if ord(ch) < 32 and ch != "\n":
            ch = " "
        out.append(ch)
        new += width
    remap[old] = new
    return "".join(out), remap


def _partial_overlap(a: _Entity, b: _Entity) -> bool:
    """True when the entities share characters but neither contains the other."""
    if a.end <= b.offset or b.end <= a.offset:
        return False
    a_in_b = b.offset <= a.offset and a.end <= b.end
    b_in_a = a.offset <= b.offset and b.end <= a.end
    return not (a_in_b or b_in_a)


def _fix_entities(entities: list[_Entity]) -> list[_Entity]:
    """A simplified tdlib fix_entities: sort, drop intersecting ones, merge and split."""
    ordered = sorted((e for e in entities if e.length > 0), key=_Entity.sort_key)
    continuous: list[_Entity] = []
    quotes: list[_Entity] = []
    splittable: list[_Entity] = []
    for entity in ordered:
        if entity.type in _SPLITTABLE:
            splittable.append(entity)
        elif entity.type in _BLOCKQUOTES:
            if not any(q.offset < entity.end and entity.offset < q.end for q in quotes):
                quotes.append(entity)
        elif not any(_partial_overlap(entity, kept) for kept in continuous):
            continuous.append(entity)
    continuous = [c for c in continuous if not any(_partial_overlap(c, q) for q in quotes)]
    others = continuous + quotes
    cuts = sorted({o.offset for o in others} | {o.end for o in others})
    pre_like = [o for o in others if o.type in _PRE_LIKE]
    pieces: list[_Entity] = []
    for kind in _SPLITTABLE:
        merged: list[list[int]] = []
        for start, end in sorted((e.offset, e.end) for e in splittable if e.type == kind):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in merged:
            points = [start, *(c for c in cuts if start < c < end), end]
            for a, b in itertools.pairwise(points):
                if any(p.offset <= a and b <= p.end for p in pre_like):
                    continue
                pieces.append(_Entity(kind, a, b - a))
    return sorted(others + pieces, key=_Entity.sort_key)


def _normalize(text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
    """What Telegram stores for ``text`` with ``entities`` (see the module docstring)."""
    total = 0
    boundaries = {0}
    for ch in text:
        total += _width(ch)
        boundaries.add(total)
    for e in entities:
        if e.offset > total:
            raise _EntityError(
                f"entity begins after the end of the text at UTF-16 offset {e.offset}"
            )
        if e.end > total:
            raise _EntityError(
                f"entity beginning at UTF-16 offset {e.offset} ends after the end of the text "
                f"at UTF-16 offset {e.end}"
            )
        if e.offset not in boundaries:
            raise _EntityError(
                f"entity begins in a middle of a UTF-16 symbol at UTF-16 offset {e.offset}"
            )
        if e.end not in boundaries:
            raise _EntityError(
                f"entity beginning at UTF-16 offset {e.offset} ends in a middle of a UTF-16 "
                f"symbol at UTF-16 offset {e.end}"
            )
    cleaned, remap = _clean(text)
    moved: list[_Entity] = []
    for e in entities:
        start, end = remap[e.offset], remap[e.end]
        moved.append(e.copy(start, end - start))
    fixed = _fix_entities(moved)

    chars = list(cleaned)
    starts: list[int] = []
    position = 0
    for ch in chars:
        starts.append(position)
        position += _width(ch)
    index_at = {start: i for i, start in enumerate(starts)}

    # entities lose their leading whitespace; whitespace-only entities disappear
    kept: list[_Entity] = []
    for e in fixed:
        if e.type not in _HIDDEN_DATA:
            while e.length > 0 and chars[index_at[e.offset]] in _WHITESPACE:
                e.offset += 1
                e.length -= 1
        if e.length > 0:
            kept.append(e)
    fixed = _fix_entities(kept)

    last = len(chars) - 1
    while last >= 0 and chars[last] in _WHITESPACE:
        last -= 1
    if last < 0:
        raise _EmptyTextError
    # rtrim
    new_total = starts[last] + _width(chars[last])
    trimmed: list[_Entity] = []
    for e in fixed:
        if e.offset >= new_total:
            continue
        if e.end > new_total:
            e.length = new_total - e.offset
        trimmed.append(e)
    chars = chars[: last + 1]
    # ltrim, but never past the first entity
    first_entity = min((e.offset for e in trimmed), default=new_total)
    skip = 0
    while skip < len(chars) and skip < first_entity and chars[skip] in _WHITESPACE:
        skip += 1
    for e in trimmed:
        e.offset -= skip
    return "".join(chars[skip:]), sorted(trimmed, key=_Entity.sort_key)


# ---- parse_mode parsers (approximations of tdlib's; the bot under test should not need them)


def _byte_offset(src: str, index: int) -> int:
    return len(src[:index].encode("utf-8"))


_HTML_TAG_TYPES: Final[dict[str, str]] = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_HTML_START_RE: Final = re.compile(r"<([^\s>/]+)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_HTML_END_RE: Final = re.compile(r"</([^\s>]*)\s*>")
_HTML_ATTR_RE: Final = re.compile(
    r"([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?"
)
_HTML_ENTITY_RE: Final = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z]+);")
_HTML_NAMED: Final[dict[str, str]] = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _html_unescape(value: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith(("#x", "#X")):
            return chr(int(name[2:], 16))
        if name.startswith("#"):
            return chr(int(name[1:]))
        return _HTML_NAMED.get(name.lower(), match.group(0))

    return _HTML_ENTITY_RE.sub(replace, value)


@dataclass
class _OpenTag:
    tag: str
    type: str
    start: int
    extra: dict[str, Any]


def _parse_html(src: str) -> tuple[str, list[_Entity]]:
    out: list[str] = []
    position = 0
    stack: list[_OpenTag] = []
    entities: list[_Entity] = []
    i = 0
    while i < len(src):
        ch = src[i]
        if ch == "<":
            byte = _byte_offset(src, i)
            if src.startswith("</", i):
                end_match = _HTML_END_RE.match(src, i)
                if end_match is None:
                    raise _EntityError(f"Unclosed end tag at byte offset {byte}")
                name = end_match.group(1).lower()
                if not stack:
                    raise _EntityError(f"Unexpected end tag at byte offset {byte}")
                top = stack.pop()
                if name != top.tag:
                    raise _EntityError(
                        f'Unmatched end tag at byte offset {byte}, expected "</{top.tag}>", '
                        f'found "</{name}>"'
                    )
                language = top.extra.pop("_language", None)
                if top.tag == "code" and language and stack and stack[-1].tag == "pre":
                    stack[-1].extra["language"] = language
                elif not (top.type == "text_link" and not top.extra.get("url")):
                    entities.append(_Entity(top.type, top.start, position - top.start, top.extra))
                i = end_match.end()
                continue
            start_match = _HTML_START_RE.match(src, i)
            if start_match is None:
                raise _EntityError(f"Unclosed start tag at byte offset {byte}")
            name = start_match.group(1).lower()
            kind = _HTML_TAG_TYPES.get(name)
            if kind is None:
                raise _EntityError(f'Unsupported start tag "{name}" at byte offset {byte}')
            attrs = {
                key.lower(): _html_unescape(value.strip("\"'"))
                for key, value in _HTML_ATTR_RE.findall(start_match.group(2))
            }
            extra: dict[str, Any] = {}
            if name == "span" and attrs.get("class") != "tg-spoiler":
                raise _EntityError(f'Tag "span" must have class "tg-spoiler" at byte offset {byte}')
            if name == "a":
                extra["url"] = attrs.get("href", "")
            elif name == "code" and attrs.get("class", "").startswith("language-"):
                extra["_language"] = attrs["class"][len("language-") :]
            elif name == "blockquote" and "expandable" in attrs:
                kind = "expandable_blockquote"
            elif name == "tg-emoji":
                emoji_id = attrs.get("emoji-id", "")
                if not emoji_id.isdigit():
                    raise _EntityError(
                        f"Custom emoji entity must have a valid emoji-id at byte offset {byte}"
                    )
                extra["custom_emoji_id"] = emoji_id
            stack.append(_OpenTag(name, kind, position, extra))
            i = start_match.end()
            continue
        if ch == "&":
            entity_match = _HTML_ENTITY_RE.match(src, i)
            if entity_match is not None:
                decoded = _html_unescape(entity_match.group(0))
                if decoded != entity_match.group(0):
                    out.append(decoded)
                    position += utf16_len(decoded)
                    i = entity_match.end()
                    continue
        out.append(ch)
        position += _width(ch)
        i += 1
    if stack:
        raise _EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    for entity in entities:
        if entity.type == "text_link":
            _check_url(entity)
    return "".join(out), entities


def _check_url(entity: _Entity) -> None:
    url = str(entity.extra.get("url", "")).strip()
    if not _URL_RE.match(url):
        raise _EntityError(f'wrong HTTP URL "{url}"')
    entity.extra["url"] = url if "://" in url else "http://" + url


_MDV2_RESERVED: Final = frozenset("_*[]()~`>#+-=|{}.!")
_MD_NAMES: Final[dict[str, str]] = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
}


@dataclass
class _OpenMarkup:
    type: str
    start: int
    byte: int
    out_index: int


def _parse_markdown_v2(src: str) -> tuple[str, list[_Entity]]:
    out: list[str] = []
    position = 0
    stack: list[_OpenMarkup] = []
    entities: list[_Entity] = []
    quote_start: int | None = None
    n = len(src)
    i = 0

    def emit(text: str) -> None:
        nonlocal position
        out.append(text)
        position += utf16_len(text)

    def read_until(start: int, closer: str, what: str, byte: int) -> tuple[str, int]:
        """Read escaped content up to an unescaped ``closer``; returns (content, next index)."""
        j = start
        parts: list[str] = []
        while j < n:
            if src[j] == "\\" and j + 1 < n and 0 < ord(src[j + 1]) <= 126:
                parts.append(src[j + 1])
                j += 2
                continue
            if src.startswith(closer, j):
                return "".join(parts), j + len(closer)
            parts.append(src[j])
            j += 1
        raise _EntityError(f"Can't find end of {what} entity at byte offset {byte}")

    while i < n:
        ch = src[i]
        if ch == "\\" and i + 1 < n and 0 < ord(src[i + 1]) <= 126:
            emit(src[i + 1])
            i += 2
            continue
        if ch == "\n" and quote_start is not None and not src.startswith(">", i + 1):
            entities.append(_Entity("blockquote", quote_start, position - quote_start))
            quote_start = None
        if ch not in _MDV2_RESERVED:
            emit(ch)
            i += 1
            continue
        byte = _byte_offset(src, i)
        top = stack[-1].type if stack else None
        if ch == ">" and (i == 0 or src[i - 1] == "\n"):
            if quote_start is None:
                quote_start = position
            i += 1
        elif ch == "`":
            if src.startswith("```", i):
                content, i = read_until(i + 3, "```", "Pre", byte)
                language = ""
                if "\n" in content:
                    first, rest = content.split("\n", 1)
                    if first and " " not in first:
                        language, content = first, rest
                start = position
                emit(content)
                extra = {"language": language} if language else {}
                entities.append(_Entity("pre", start, position - start, extra))
            else:
                content, i = read_until(i + 1, "`", "Code", byte)
                start = position
                emit(content)
                entities.append(_Entity("code", start, position - start))
        elif ch == "*" or ch == "~" or (ch == "|" and src.startswith("||", i)):
            kind = {"*": "bold", "~": "strikethrough", "|": "spoiler"}[ch]
            if top == kind:
                opened = stack.pop()
                entities.append(_Entity(kind, opened.start, position - opened.start))
            else:
                stack.append(_OpenMarkup(kind, position, byte, len(out)))
            i += 2 if ch == "|" else 1
        elif ch == "_":
            if top == "underline" and src.startswith("__", i):
                opened = stack.pop()
                entities.append(_Entity("underline", opened.start, position - opened.start))
                i += 2
            elif top == "italic":
                opened = stack.pop()
                entities.append(_Entity("italic", opened.start, position - opened.start))
                i += 1
            elif src.startswith("__", i):
                stack.append(_OpenMarkup("underline", position, byte, len(out)))
                i += 2
            else:
                stack.append(_OpenMarkup("italic", position, byte, len(out)))
                i += 1
        elif ch == "[":
            stack.append(_OpenMarkup("text_link", position, byte, len(out)))
            i += 1
        elif ch == "!" and src.startswith("![", i):
            stack.append(_OpenMarkup("custom_emoji", position, byte, len(out)))
            i += 2
        elif ch == "]" and top in ("text_link", "custom_emoji"):
            opened = stack.pop()
            i += 1
            if i < n and src[i] == "(":
                url, i = read_until(i + 1, ")", "a url", _byte_offset(src, i))
            else:
                url = "".join(out[opened.out_index :])
            length = position - opened.start
            if opened.type == "custom_emoji":
                match = re.fullmatch(r"tg://emoji\?id=(\d+)", url)
                if match is None:
                    raise _EntityError(
                        f"Custom emoji URL must have an emoji identifier at byte offset {byte}"
                    )
                entities.append(
                    _Entity("custom_emoji", opened.start, length, {"custom_emoji_id": match[1]})
                )
            elif url:
                entity = _Entity("text_link", opened.start, length, {"url": url})
                _check_url(entity)
                entities.append(entity)
        else:
            raise _EntityError(
                f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
            )
    if quote_start is not None:
        entities.append(_Entity("blockquote", quote_start, position - quote_start))
    if stack:
        opened = stack[-1]
        raise _EntityError(
            f"Can't find end of {_MD_NAMES[opened.type]} entity at byte offset {opened.byte}"
        )
    return "".join(out), entities


def _parse_markdown(src: str) -> tuple[str, list[_Entity]]:
    """Legacy Markdown: *bold*, _italic_, `code`, ```pre```, [text](url); no nesting."""
    out: list[str] = []
    position = 0
    entities: list[_Entity] = []
    kinds = {"*": "bold", "_": "italic", "`": "code"}
    i = 0

    def emit(text: str) -> int:
        nonlocal position
        start = position
        out.append(text)
        position += utf16_len(text)
        return start

    while i < len(src):
        ch = src[i]
        if ch == "\\" and i + 1 < len(src) and src[i + 1] in "_*`[":
            emit(src[i + 1])
            i += 2
            continue
        if ch not in "_*`[":
            emit(ch)
            i += 1
            continue
        error = _EntityError(
            f"Can't find end of the entity starting at byte offset {_byte_offset(src, i)}"
        )
        if ch == "[":
            close = src.find("]", i + 1)
            if close < 0 or not src.startswith("(", close + 1):
                raise error
            end = src.find(")", close + 2)
            if end < 0:
                raise error
            start = emit(src[i + 1 : close])
            entity = _Entity("text_link", start, position - start, {"url": src[close + 2 : end]})
            _check_url(entity)
            entities.append(entity)
            i = end + 1
        elif src.startswith("```", i):
            end = src.find("```", i + 3)
            if end < 0:
                raise error
            content = src[i + 3 : end]
            extra: dict[str, Any] = {}
            if "\n" in content:
                first, rest = content.split("\n", 1)
                if first and " " not in first:
                    extra["language"] = first
                    content = rest
            start = emit(content)
            entities.append(_Entity("pre", start, position - start, extra))
            i = end + 3
        else:
            end = src.find(ch, i + 1)
            if end < 0:
                raise error
            start = emit(src[i + 1 : end])
            entities.append(_Entity(kinds[ch], start, position - start))
            i = end + 1
    return "".join(out), entities


_PARSERS: Final[dict[str, Callable[[str], tuple[str, list[_Entity]]]]] = {
    "html": _parse_html,
    "markdownv2": _parse_markdown_v2,
    "markdown": _parse_markdown,
}


# --------------------------------------------------------------------------------------------
# parameters


def _to_bool(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value


def _decode_params(raw: dict[str, Any]) -> tuple[dict[str, Any], _ApiError | None]:
    """Decode JSON fields and convert known scalars; keeps undecodable values as they came."""
    params: dict[str, Any] = {}
    error: _ApiError | None = None
    for key, value in raw.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                name = key.replace("_", " ")
                error = error or _bad(f"can't parse {name} JSON object")
        elif key in _INT_FIELDS and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        elif key in _BOOL_FIELDS:
            value = _to_bool(value)
        params[key] = value
    return params, error


async def _read_params(request: web.Request) -> tuple[dict[str, Any], _ApiError | None]:
    params: dict[str, Any] = dict(request.query)
    if request.method != "POST" or not request.body_exists:
        return params, None
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return params, _bad("can't parse JSON encoded request body")
        if not isinstance(body, dict):
            return params, _bad("JSON encoded request body must be an object")
        params.update(body)
        return params, None
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = {"file": value.filename}
            else:
                params[key] = value
    return params, None


# --------------------------------------------------------------------------------------------
# rate limiting


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0


@dataclass
class _Window:
    limit: int
    length: float
    times: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.length:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[len(self.times) - self.limit] + self.length - now

    def take(self, now: float) -> None:
        self.times.append(now)


@dataclass
class _Fault:
    error_code: int
    description: str
    retry_after: int | None
    times: int
    html: str | None = None


class _LongPoll:
    def __init__(self) -> None:
        self.woken: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def wake(self, reason: str) -> None:
        if not self.woken.done():
            self.woken.set_result(reason)


# --------------------------------------------------------------------------------------------
# the fake


class FakeTelegram:
    """A strict fake Telegram Bot API server (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token",
        bot_id: int = 123456,
        bot_username: str = "gptalk_test_bot",
        time_scale: float = 1.0,
        private_rate: float = 1.0,
        private_burst: int = 3,
        group_limit: int = 20,
        group_window: float = 60.0,
        global_limit: int = 30,
        enforce_limits: bool = True,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.token = token
        self.time_scale = time_scale
        self.private_rate = private_rate
        self.private_burst = private_burst
        self.group_limit = group_limit
        self.group_window = group_window
        self.global_limit = global_limit
        self.enforce_limits = enforce_limits
        self.bot_user: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "GPTalk Test Bot",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        # inspection
        self.calls: list[Call] = []
        self.too_many_requests = 0
        self.injected_errors = 0
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.dropped_updates: list[dict[str, Any]] = []
        """Updates not queued because of the bot's ``allowed_updates``."""
        self.drafts: list[Draft] = []
        """Accepted drafts, in order."""
        self.callback_answers: dict[str, dict[str, Any]] = {}
        """``answerCallbackQuery`` parameters by query id."""
        # state
        self._t0 = time.monotonic()
        self._users: dict[int, dict[str, Any]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._messages: dict[int, dict[int, StoredMessage]] = {}
        self._last_message_id: dict[int, int] = {}
        self._blocked: set[int] = set()
        self._migrated: dict[int, int] = {}  # old group id -> its supergroup's id
        self._restricted: set[int] = set()  # chats where the bot may not send messages
        self._closed_topics: set[tuple[int, int]] = set()
        # chat id -> user id -> declared status and its details (see set_member)
        self._members: dict[int, dict[int, dict[str, Any]]] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._allowed_updates: frozenset[str] = _DEFAULT_UPDATE_TYPES
        self._poll: _LongPoll | None = None
        self._closing = False
        self._private_buckets: dict[int, _Bucket] = {}
        self._group_windows: dict[int, _Window] = {}
        # Bot-wide: at most global_limit calls in any rolling (fake) second.
        self._global_window = _Window(global_limit, 1.0)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        # webhook
        self.webhook: dict[str, Any] | None = None
        """The registered webhook: ``url``, ``secret_token``, ``allowed_updates``."""
        self._deliver = True
        self.webhook_retry = 1.0
        self.deliveries: list[tuple[int, int]] = []
        """Every webhook delivery attempt: (update_id, HTTP status; 0 = no connection)."""
        self._deliverer: asyncio.Task[None] | None = None
        self._delivery_wake = asyncio.Event()
        self._client: Any = None
        self._callback_ids = itertools.count(7_000_000_001)

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``TelegramAPIServer.from_base`` (after :meth:`start`)."""
        if self._url is None:
            raise RuntimeError("FakeTelegram is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._closing = False  # a restart after close() serves long polls again
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a client that goes away (aiogram's stop_polling) ends its poll
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self._url = f"http://{host}:{bound_port}"
        return self._url

    async def close(self) -> None:
        self._closing = True
        if self._poll is not None:
            self._poll.wake("close")
        if self._deliverer is not None:
            self._deliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deliverer
            self._deliverer = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def now(self) -> float:
        """The fake clock, in fake seconds (see the module docstring)."""
        return (time.monotonic() - self._t0) / self.time_scale

    # ---- users, chats and what users do --------------------------------------------------

    def add_user(
        self,
        user_id: int,
        first_name: str,
        *,
        username: str | None = None,
        is_bot: bool = False,
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        """Register a user; returns the User object."""
        user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
        if username is not None:
            user["username"] = username
        if language_code is not None:
            user["language_code"] = language_code
        self._users[user_id] = user
        return dict(user)

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        """The private chat with ``user`` (known to the bot from now on); returns the Chat."""
        chat: dict[str, Any] = {
            "id": user["id"],
            "type": "private",
            "first_name": user["first_name"],
        }
        for key in ("last_name", "username"):
            if key in user:
                chat[key] = user[key]
        self._chats[chat["id"]] = chat
        return dict(chat)

    def group_chat(
        self, chat_id: int, title: str, *, supergroup: bool = True, forum: bool = False
    ) -> dict[str, Any]:
        """A group the bot is a member of; ``chat_id`` must be negative. Returns the Chat."""
        if chat_id >= 0:
            raise ValueError("group chat ids are negative")
        if forum and not supergroup:
            raise ValueError("only supergroups can be forums")
        chat: dict[str, Any] = {
            "id": chat_id,
            "type": "supergroup" if supergroup else "group",
            "title": title,
        }
        if forum:
            chat["is_forum"] = True
        self._chats[chat_id] = chat
        return dict(chat)

    def forum_topic(
        self, chat: dict[str, Any], name: str, *, user: dict[str, Any] | None = None
    ) -> int:
        """Create a forum topic (queues its service message); returns its message_thread_id."""
        chat = self._register_chat(chat)
        if not chat.get("is_forum"):
            raise ValueError("not a forum chat")
        message_id = self._new_message_id(chat["id"])
        raw: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": dict(chat),
            "message_thread_id": message_id,
            "is_topic_message": True,
            "forum_topic_created": {"name": name, "icon_color": _FORUM_ICON_COLOR},
        }
        if user is not None:
            raw["from"] = dict(user)
        self._store(
            StoredMessage(
                chat_id=chat["id"],
                message_id=message_id,
                text="",
                entities=[],
                from_bot=False,
                thread_id=message_id,
                reply_to=None,
                date=raw["date"],
                history=[""],
                raw=raw,
            )
        )
        self.push_update({"message": raw})
        return message_id

    def user_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        text: str | None = None,
        *,
        entities: list[dict[str, Any]] | None = None,
        reply_to: int | None = None,
        thread_id: int | None = None,
        is_topic_message: bool = False,
        caption: str | None = None,
        caption_entities: list[dict[str, Any]] | None = None,
        photo: bool = False,
        document: bool = False,
        sticker: bool = False,
        voice: bool = False,
        sender_chat: dict[str, Any] | None = None,
        forward_origin: dict[str, Any] | None = None,
        date: int | None = None,
    ) -> dict[str, Any]:
        """A user sends a message: stores it, queues a ``message`` update, returns the Message."""
        chat = self._register_chat(chat)
        chat_id = chat["id"]
        if user is not None:
            self._users.setdefault(user["id"], dict(user))
            if chat["type"] != "private" and sender_chat is None:
                self._members.setdefault(chat_id, {}).setdefault(user["id"], {"status": "member"})
        if text is None and not (photo or document or sticker or voice):
            raise ValueError("a message needs text or some media")
        reply_message: dict[str, Any] | None = None
        if reply_to is not None:
            target = self._live_message(chat_id, reply_to)
            if target is None:
                raise ValueError(f"no message {reply_to} in chat {chat_id} to reply to")
            reply_message = dict(target.raw)
        elif is_topic_message and thread_id is not None:
            reply_message = self._topic_root(chat, thread_id)
        message_id = self._new_message_id(chat_id)
        unique = f"{chat_id}_{message_id}"
        raw: dict[str, Any] = {"message_id": message_id}
        if user is not None:
            raw["from"] = dict(user)
        if sender_chat is not None:
            raw["sender_chat"] = dict(sender_chat)
        raw["chat"] = dict(chat)
        raw["date"] = int(time.time()) if date is None else date
        if thread_id is not None:
            raw["message_thread_id"] = thread_id
        if is_topic_message:
            raw["is_topic_message"] = True
        if forward_origin is not None:
            raw["forward_origin"] = dict(forward_origin)
        if reply_message is not None:
            raw["reply_to_message"] = reply_message
        if text is not None:
            raw["text"] = text
            if entities:
                raw["entities"] = [dict(e) for e in entities]
        if photo:
            raw["photo"] = [
                {
                    "file_id": f"photo-{unique}-{size}",
                    "file_unique_id": f"p{unique}{size}",
                    "width": size,
                    "height": size,
                    "file_size": size * 100,
                }
                for size in (90, 320, 800)
            ]
        if document:
            raw["document"] = {
                "file_id": f"document-{unique}",
                "file_unique_id": f"d{unique}",
                "file_name": "file.txt",
                "mime_type": "text/plain",
                "file_size": 1234,
            }
        if sticker:
            raw["sticker"] = {
                "file_id": f"sticker-{unique}",
                "file_unique_id": f"s{unique}",
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
                "emoji": "👍",
            }
        if voice:
            raw["voice"] = {
                "file_id": f"voice-{unique}",
                "file_unique_id": f"v{unique}",
                "duration": 2,
                "mime_type": "audio/ogg",
                "file_size": 4321,
            }
        if caption is not None:
            raw["caption"] = caption
            if caption_entities:
                raw["caption_entities"] = [dict(e) for e in caption_entities]
        stored_raw = {k: v for k, v in raw.items() if k != "reply_to_message"}
        self._store(
            StoredMessage(
                chat_id=chat_id,
                message_id=message_id,
                text=text or "",
                entities=[dict(e) for e in entities or []],
                from_bot=False,
                thread_id=thread_id,
                reply_to=reply_to,
                date=raw["date"],
                history=[text or ""],
                raw=stored_raw,
            )
        )
        self.push_update({"message": raw})
        return raw

    def edited_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        message_id: int,
        text: str,
        *,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A user edits their message: queues an ``edited_message`` update, returns the Message."""
        chat_id = chat["id"]
        stored = self._live_message(chat_id, message_id)
        if stored is None or stored.from_bot:
            raise ValueError(f"no user message {message_id} in chat {chat_id}")
        if user is not None and stored.raw.get("from", {}).get("id") != user["id"]:
            raise ValueError("users can only edit their own messages")
        stored.text = text
        stored.entities = [dict(e) for e in entities or []]
        stored.edits += 1
        stored.history.append(text)
        stored.raw["text"] = text
        stored.raw.pop("entities", None)
        if entities:
            stored.raw["entities"] = [dict(e) for e in entities]
        stored.raw["edit_date"] = int(time.time())
        raw = dict(stored.raw)
        if stored.reply_to is not None:
            target = self._messages[chat_id].get(stored.reply_to)
            if target is not None:
                raw["reply_to_message"] = dict(target.raw)
        self.push_update({"edited_message": raw})
        return raw

    def press_button(
        self,
        user: dict[str, Any],
        chat_id: int,
        message_id: int,
        data: str | None = None,
    ) -> str:
        """``user`` presses an inline button of the bot's message: queues a ``callback_query``
        update and returns its id. ``data`` defaults to the first button's ``callback_data``;
        pass any string to forge one. Pressing requires the keyboard to be there."""
        message = self._live_message(chat_id, message_id)
        if message is None or not message.from_bot:
            raise ValueError(f"no bot message {message_id} in chat {chat_id}")
        if data is None:
            if message.reply_markup is None:
                raise ValueError("the message has no inline keyboard to press")
            data = str(message.reply_markup["inline_keyboard"][0][0]["callback_data"])
        self._users.setdefault(user["id"], dict(user))
        query_id = str(next(self._callback_ids))
        query = {
            "id": query_id,
            "from": dict(user),
            "message": self._with_reply(message),
            "chat_instance": str(abs(chat_id) * 7 + 1),
            "data": data,
        }
        self.push_update({"callback_query": query})
        return query_id

    def stop_generation(self, chat_id: int, draft_id: int) -> None:
        """The user pressed a draft's stop button: queues ``stopped_message_generation``."""
        chat = self._chats[chat_id]
        self.push_update({"stopped_message_generation": {"chat": dict(chat), "draft_id": draft_id}})

    def _service_message(
        self, chat: dict[str, Any], user: dict[str, Any] | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        chat = self._register_chat(chat)
        message_id = self._new_message_id(chat["id"])
        raw: dict[str, Any] = {"message_id": message_id}
        if user is not None:
            raw["from"] = dict(user)
        raw.update({"chat": dict(chat), "date": int(time.time()), **fields})
        self._store(
            StoredMessage(
                chat_id=chat["id"],
                message_id=message_id,
                text="",
                entities=[],
                from_bot=False,
                thread_id=fields.get("message_thread_id"),
                reply_to=None,
                date=raw["date"],
                history=[""],
                raw=raw,
            )
        )
        self.push_update({"message": raw})
        return raw

    def _bot_member(self, status: str) -> dict[str, Any]:
        if status not in ("member", "restricted", "left", "kicked"):
            raise ValueError(f"unsupported status {status!r}")
        return self._member(self._bot_from(), {"status": status}, supergroup=True)

    @staticmethod
    def _member(
        user: dict[str, Any], declared: dict[str, Any], *, supergroup: bool
    ) -> dict[str, Any]:
        """A ChatMember as Telegram's Bot API writes it (telegram-bot-api's JsonChatMember)."""
        status = declared["status"]
        member: dict[str, Any] = {"user": dict(user), "status": status}
        title = declared.get("custom_title")
        if status == "creator":
            if title:
                member["custom_title"] = title
            member["is_anonymous"] = bool(declared.get("is_anonymous"))
        elif status == "administrator":
            member.update(
                {
                    "can_be_edited": False,
                    "can_manage_chat": True,
                    "can_change_info": True,
                    "can_delete_messages": True,
                    "can_invite_users": True,
                    "can_restrict_members": True,
                    "can_pin_messages": True,
                }
            )
            if supergroup:
                member["can_manage_topics"] = False
            member.update(
                {
                    "can_promote_members": False,
                    "can_manage_video_chats": True,
                    "can_post_stories": False,
                    "can_edit_stories": False,
                    "can_delete_stories": False,
                    "can_manage_tags": False,
                    # newer than the telegram-bot-api the shapes were read from; aiogram needs it
                    "can_send_welcome_messages": False,
                    "is_anonymous": bool(declared.get("is_anonymous")),
                    "can_manage_voice_chats": True,  # the old name, still sent
                }
            )
            if title:
                member["custom_title"] = title
        elif status == "restricted":  # only supergroups have restricted members
            member.update({"until_date": 0, "is_member": True})
            member.update(dict.fromkeys(_RESTRICTED_RIGHTS, False))
        elif status == "kicked":
            member["until_date"] = 0
        return member

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue a raw update (assigns ``update_id`` if missing)."""
        update = dict(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        kinds = [key for key in update if key != "update_id"]
        if kinds and kinds[0] not in self._allowed_updates:
            self.dropped_updates.append(update)
            return
        self._updates.append(update)
        self._updates.sort(key=lambda u: int(u["update_id"]))
        if self._poll is not None:
            self._poll.wake("update")
        self._delivery_wake.set()

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by an offset."""
        return list(self._updates)

    @property
    def long_poll_pending(self) -> bool:
        """Whether a getUpdates long poll is waiting right now."""
        return self._poll is not None

    @property
    def deliver(self) -> bool:
        """Whether queued updates are POSTed to the registered webhook (like Telegram)."""
        return self._deliver

    @deliver.setter
    def deliver(self, value: bool) -> None:
        self._deliver = value
        self._delivery_wake.set()

    def take_updates(self) -> list[dict[str, Any]]:
        """Remove and return the queued updates (to POST them by hand)."""
        updates, self._updates = self._updates, []
        return updates

    async def post_update(
        self,
        update: dict[str, Any],
        url: str | None = None,
        secret: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """POST ``update`` like Telegram: to ``url`` (default: the registered webhook) with
        ``secret`` (default: the registered one; ``""``: no header). Returns (status, body)."""
        if url is None or secret is None:
            if self.webhook is None:
                raise RuntimeError("no webhook is registered")
            if url is None:
                url = self.webhook["url"]
            if secret is None:
                secret = self.webhook.get("secret_token") or ""
        sent = dict(headers or {})
        if secret:
            sent[SECRET_HEADER] = secret
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._client.post(url, json=update, headers=sent) as response:
            return response.status, await response.text()

    # ---- inspection ----------------------------------------------------------------------

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        """Recorded calls of ``method`` (any case), optionally only those to ``chat_id``."""
        name = _METHODS.get(method.lower(), method)
        return [
            call
            for call in self.calls
            if call.method == name and (chat_id is None or call.params.get("chat_id") == chat_id)
        ]

    def bot_messages(self, chat_id: int) -> list[StoredMessage]:
        """The bot's (not deleted) messages in that chat, in order."""
        return [m for m in self._messages.get(chat_id, {}).values() if m.from_bot and not m.deleted]

    def message(self, chat_id: int, message_id: int) -> StoredMessage:
        """Any stored message (deleted ones too); KeyError if there is none."""
        return self._messages[chat_id][message_id]

    def visible_text(self, chat_id: int, reply_to: int) -> str:
        """The text the user sees as the bot's answer to message ``reply_to``.

        The answer starts with the first bot message replying to ``reply_to`` and continues with
        the following bot messages in the same chat and thread that reply to nothing, to
        ``reply_to`` or to an earlier part; it ends at a bot message replying to anything else.
        Deleted messages are skipped. The parts' texts are joined with "".
        """
        parts: list[StoredMessage] = []
        for m in self.bot_messages(chat_id):
            if not parts:
                if m.reply_to == reply_to:
                    parts.append(m)
                continue
            if m.thread_id != parts[0].thread_id:
                continue
            continues = (
                m.reply_to is None
                or m.reply_to == reply_to
                or m.reply_to in {p.message_id for p in parts}
                or self._is_topic_root(chat_id, m.reply_to)
            )
            if not continues:
                break
            parts.append(m)
        return "".join(p.text for p in parts)

    # ---- fault injection -----------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
        html: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with this error, before any processing.

        ``description`` is sent as given (e.g. ``"Too Many Requests: retry after 5"``).
        aiogram raises ``TelegramRetryAfter`` only when ``retry_after`` is given. Any status
        code goes (a 418 becomes aiogram's bare ``TelegramAPIError``). With ``html`` the body is
        that page (``text/html``) instead of Bot API JSON, as a proxy in front of Telegram
        answers when the Bot API behind it is down (see :data:`BAD_GATEWAY_HTML`).
        """
        name = _METHODS.get(method.lower(), method).lower()
        self._faults.setdefault(name, deque()).append(
            _Fault(error_code, description, retry_after, times, html)
        )

    def block_chat(self, chat_id: int) -> None:
        """From now on every send/edit/chat action there fails with 403."""
        self._blocked.add(chat_id)

    def migrate_group(
        self,
        chat_id: int,
        new_chat_id: int,
        *,
        user: dict[str, Any] | None = None,
        service_messages: bool = True,
    ) -> dict[str, Any]:
        """The group ``chat_id`` becomes the supergroup ``new_chat_id``; returns the new Chat.

        From now on every call naming the old id fails with 400 :data:`MIGRATED` and
        ``parameters.migrate_to_chat_id``. With ``service_messages`` the two messages Telegram
        sends are queued: ``migrate_to_chat_id`` in the old group, ``migrate_from_chat_id`` in
        the new supergroup (both from ``user``, who upgraded the group).
        """
        old = self._chats[chat_id]
        if old["type"] != "group":
            raise ValueError("only basic groups migrate to supergroups")
        new = self.group_chat(new_chat_id, old["title"], supergroup=True)
        self._migrated[chat_id] = new_chat_id
        if service_messages:
            for chat, key, value in (
                (old, "migrate_to_chat_id", new_chat_id),
                (new, "migrate_from_chat_id", chat_id),
            ):
                self._service_message(chat, user, {key: value})
        return dict(new)

    def restrict_bot(self, chat_id: int) -> None:
        """An admin takes the bot's right to send messages: sendMessage fails with 400
        :data:`NO_RIGHTS` (no update is queued: see :meth:`bot_member_changed`)."""
        self._restricted.add(chat_id)

    def unrestrict_bot(self, chat_id: int) -> None:
        self._restricted.discard(chat_id)

    def bot_member_changed(
        self,
        chat: dict[str, Any],
        old: str,
        new: str,
        *,
        user: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a ``my_chat_member`` update: the bot's status in ``chat`` went from ``old`` to
        ``new`` (``member``, ``restricted`` = member without the right to send, ``left``,
        ``kicked``), changed by ``user``. Returns the ChatMemberUpdated object."""
        chat = self._register_chat(chat)
        changed: dict[str, Any] = {
            "chat": dict(chat),
            "from": dict(user) if user is not None else self._bot_from(),
            "date": int(time.time()),
            "old_chat_member": self._bot_member(old),
            "new_chat_member": self._bot_member(new),
        }
        self.push_update({"my_chat_member": changed})
        return changed

    def set_member(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        status: str,
        *,
        is_anonymous: bool = False,
        custom_title: str | None = None,
    ) -> None:
        """Declare ``user``'s status in the group ``chat``, as ``getChatMember`` and
        ``getChatAdministrators`` report it: ``creator``, ``administrator``, ``member``,
        ``restricted``, ``left`` or ``kicked``. ``is_anonymous``: an admin who writes as the
        chat (supergroups only). No update is queued."""
        chat = self._register_chat(chat)
        if chat["type"] not in ("group", "supergroup"):
            raise ValueError("members are declared in groups and supergroups")
        if status not in _MEMBER_STATUSES:
            raise ValueError(f"unknown status {status!r}")
        supergroup = chat["type"] == "supergroup"
        if status == "restricted" and not supergroup:
            raise ValueError("only supergroups have restricted members")
        if is_anonymous and not (status in _ADMIN_STATUSES and supergroup):
            raise ValueError("only admins of a supergroup can be anonymous")
        members = self._members.setdefault(chat["id"], {})
        if status == "creator" and any(
            m["status"] == "creator" and uid != user["id"] for uid, m in members.items()
        ):
            raise ValueError("a chat has one creator")
        self._users.setdefault(user["id"], dict(user))
        members[user["id"]] = {
            "status": status,
            "is_anonymous": is_anonymous,
            "custom_title": custom_title,
        }

    def close_topic(self, chat_id: int, thread_id: int) -> None:
        """The topic is closed to the bot: sendMessage there fails with 400 :data:`TOPIC_CLOSED`."""
        self._closed_topics.add((chat_id, thread_id))

    def reopen_topic(
        self, chat: dict[str, Any], thread_id: int, *, user: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Open the topic again; queues the ``forum_topic_reopened`` service message."""
        self._closed_topics.discard((chat["id"], thread_id))
        return self._service_message(
            chat,
            user,
            {"message_thread_id": thread_id, "is_topic_message": True, "forum_topic_reopened": {}},
        )

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """The user deleted the message: later edits fail with "message to edit not found"."""
        self._messages[chat_id][message_id].deleted = True

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the public API takes a timeout
    ) -> None:
        """Poll ``predicate`` until true; TimeoutError after ``timeout`` *real* seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.005)

    # ---- HTTP ----------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error_response(_ApiError(404, "Not Found"))

    async def _handle(self, request: web.Request) -> web.Response:
        at = self.now()
        raw_method = request.match_info["method"]
        method = _METHODS.get(raw_method.lower())
        raw_params, read_error = await _read_params(request)
        params, decode_error = _decode_params(raw_params)
        name = method or raw_method
        try:
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            if method is None:
                raise _ApiError(404, "Not Found")
            if read_error is not None:
                raise read_error
            self._injected(method, params)
            if decode_error is not None:
                raise decode_error
            result = await self._dispatch(method, params)
        except _ApiError as error:
            self.calls.append(Call(name, params, at, False, error.code, error.description))
            return self._error_response(error)
        self.calls.append(Call(name, params, at, True))
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error_response(error: _ApiError) -> web.Response:
        if error.html is not None:
            return web.Response(text=error.html, status=error.code, content_type="text/html")
        body: dict[str, Any] = {
            "ok": False,
            "error_code": error.code,
            "description": error.description,
        }
        if error.retry_after is not None:
            body["parameters"] = {"retry_after": error.retry_after}
        if error.migrate_to_chat_id is not None:
            body["parameters"] = {"migrate_to_chat_id": error.migrate_to_chat_id}
        return web.json_response(body, status=error.code)

    def _injected(self, method: str, params: dict[str, Any]) -> None:
        faults = self._faults.get(method.lower())
        if faults:
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.popleft()
            self.injected_errors += 1
            raise _ApiError(
                fault.error_code, fault.description, retry_after=fault.retry_after, html=fault.html
            )

    async def _dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getUpdates":
            return await self._get_updates(params)
        handler: Callable[[dict[str, Any]], Any] = getattr(self, "_m_" + method)
        return handler(params)

    # ---- helpers -------------------------------------------------------------------------

    def _register_chat(self, chat: dict[str, Any]) -> dict[str, Any]:
        known = self._chats.get(chat["id"])
        if known is None:
            known = dict(chat)
            self._chats[chat["id"]] = known
        return known

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._last_message_id.get(chat_id, 0) + 1
        self._last_message_id[chat_id] = message_id
        return message_id

    def _store(self, message: StoredMessage) -> None:
        self._messages.setdefault(message.chat_id, {})[message.message_id] = message

    def _live_message(self, chat_id: int, message_id: Any) -> StoredMessage | None:
        if not _is_int(message_id):
            return None
        message = self._messages.get(chat_id, {}).get(message_id)
        if message is None or message.deleted:
            return None
        return message

    def _topic_root(self, chat: dict[str, Any], thread_id: int) -> dict[str, Any]:
        """The topic's creation message, which Telegram puts in reply_to_message."""
        stored = self._messages.get(chat["id"], {}).get(thread_id)
        if stored is not None:
            return dict(stored.raw)
        return {
            "message_id": thread_id,
            "date": int(time.time()),
            "chat": dict(chat),
            "message_thread_id": thread_id,
            "is_topic_message": True,
            "forum_topic_created": {"name": f"Topic {thread_id}", "icon_color": _FORUM_ICON_COLOR},
        }

    def _is_topic_root(self, chat_id: int, message_id: int) -> bool:
        stored = self._messages.get(chat_id, {}).get(message_id)
        return stored is not None and "forum_topic_created" in stored.raw

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        chat = self._chats.get(chat_id) if _is_int(chat_id) else None
        if chat is None:
            raise _bad("chat not found")
        if chat["id"] in self._migrated:
            self.injected_errors += 1
            raise _ApiError(400, MIGRATED, migrate_to_chat_id=self._migrated[chat["id"]])
        return chat

    def _check_blocked(self, chat: dict[str, Any]) -> None:
        if chat["id"] not in self._blocked:
            return
        self.injected_errors += 1
        if chat["type"] == "private":
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        kind = "supergroup" if chat["type"] == "supergroup" else "group"
        raise _ApiError(403, f"Forbidden: bot was kicked from the {kind} chat")

    def _formatted(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text = params.get("text")
        if text is None or text == "":
            raise _bad("message text is empty")
        text = str(text)
        parse_mode = params.get("parse_mode")
        raw_entities = params.get("entities")
        try:
            if parse_mode is not None and parse_mode != "":
                if raw_entities is not None:
                    raise _EntityError("entities and parse_mode can't be used together")
                parser = _PARSERS.get(str(parse_mode).lower())
                if parser is None:
                    raise _bad("unsupported parse_mode")
                text, entities = parser(text)
            else:
                entities = _parse_entity_list(raw_entities)
            text, entities = _normalize(text, entities)
        except _EntityError as error:
            raise _bad(f"can't parse entities: {error}") from None
        except _EmptyTextError:
            raise _bad("message text is empty") from None
        if utf16_len(text) > MAX_MESSAGE_LENGTH:
            raise _bad("message is too long")
        return text, [e.to_dict() for e in entities]

    @staticmethod
    def _reply_markup(params: dict[str, Any], *, inline_only: bool) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" in markup:
            keyboard = markup["inline_keyboard"]
            if not isinstance(keyboard, list) or not all(isinstance(r, list) for r in keyboard):
                raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array')
            actions = (
                "url",
                "callback_data",
                "web_app",
                "login_url",
                "switch_inline_query",
                "switch_inline_query_current_chat",
                "switch_inline_query_chosen_chat",
                "copy_text",
                "callback_game",
                "pay",
            )
            for row in keyboard:
                for button in row:
                    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                        raise _bad("can't parse inline keyboard button: Text must be a String")
                    if not button["text"].strip():
                        raise _bad("BUTTON_TEXT_INVALID")
                    present = [key for key in actions if key in button]
                    if len(present) != 1:
                        raise _bad(
                            "can't parse inline keyboard button: Text buttons are unallowed in "
                            "the inline keyboard"
                        )
                    data = button.get("callback_data")
                    if data is not None and not (
                        isinstance(data, str) and 1 <= len(data.encode()) <= 64
                    ):
                        raise _bad("BUTTON_DATA_INVALID")
            return markup
        if inline_only:
            raise _bad("inline keyboard expected")
        if any(key in markup for key in ("keyboard", "remove_keyboard", "force_reply")):
            return None  # reply keyboards are not attached to the message
        raise _bad("can't parse reply keyboard markup JSON object")

    def _reply_target(self, chat_id: int, params: dict[str, Any]) -> StoredMessage | None:
        reply = params.get("reply_parameters")
        if reply is None:
            message_id = params.get("reply_to_message_id")
            allow = bool(params.get("allow_sending_without_reply", False))
            if message_id is None:
                return None
        else:
            if not isinstance(reply, dict) or "message_id" not in reply:
                raise _bad("can't parse reply parameters JSON object")
            message_id = reply["message_id"]
            allow = bool(_to_bool(reply.get("allow_sending_without_reply", False)))
            other_chat = reply.get("chat_id")
            if other_chat is not None and other_chat != chat_id:
                if allow:
                    return None
                raise _bad("message to be replied not found")
        target = self._live_message(chat_id, message_id)
        if target is None and not allow:
            raise _bad("message to be replied not found")
        return target

    def _rate_check(self, chat_id: int) -> None:
        """429 if the call would exceed a limit; otherwise consume the budget."""
        if not self.enforce_limits:
            return
        now = self.now()
        chat_limit: _Bucket | _Window
        if chat_id < 0:
            window = self._group_windows.get(chat_id)
            if window is None:
                window = _Window(self.group_limit, self.group_window)
                self._group_windows[chat_id] = window
            chat_limit = window
        else:
            bucket = self._private_buckets.get(chat_id)
            if bucket is None:
                burst = float(self.private_burst)
                bucket = _Bucket(self.private_rate, burst, burst, now)
                self._private_buckets[chat_id] = bucket
            chat_limit = bucket
        wait = max(chat_limit.wait(now), self._global_window.wait(now))
        if wait > 0:
            self.too_many_requests += 1
            retry_after = max(1, math.ceil(wait - 1e-9))
            raise _ApiError(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            )
        chat_limit.take(now)
        self._global_window.take(now)

    def _bot_from(self) -> dict[str, Any]:
        return {key: self.bot_user[key] for key in ("id", "is_bot", "first_name", "username")}

    def _bot_raw(self, message: StoredMessage, edit_date: int | None = None) -> dict[str, Any]:
        chat = self._chats[message.chat_id]
        raw: dict[str, Any] = {
            "message_id": message.message_id,
            "from": self._bot_from(),
            "chat": dict(chat),
            "date": message.date,
        }
        if message.thread_id is not None:
            raw["message_thread_id"] = message.thread_id
            if chat.get("is_forum"):
                raw["is_topic_message"] = True
        if edit_date is not None:
            raw["edit_date"] = edit_date
        raw["text"] = message.text
        if message.entities:
            raw["entities"] = [dict(e) for e in message.entities]
        if message.reply_markup is not None:
            raw["reply_markup"] = message.reply_markup
        return raw

    def _with_reply(self, message: StoredMessage) -> dict[str, Any]:
        raw = dict(message.raw)
        chat = self._chats[message.chat_id]
        if message.reply_to is not None:
            target = self._messages.get(message.chat_id, {}).get(message.reply_to)
            if target is not None:
                raw["reply_to_message"] = dict(target.raw)
        elif message.thread_id is not None and chat.get("is_forum"):
            raw["reply_to_message"] = self._topic_root(chat, message.thread_id)
        return raw

    # ---- methods -------------------------------------------------------------------------

    def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.bot_user)

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = params.get("offset", 0)
        limit = params.get("limit", 100)
        timeout = params.get("timeout", 0)
        offset = offset if _is_int(offset) else 0
        limit = min(max(limit, 1), 100) if _is_int(limit) else 100
        timeout = min(max(timeout, 0), _LONG_POLL_MAX_TIMEOUT) if _is_int(timeout) else 0
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list) and all(isinstance(a, str) for a in allowed):
            known = frozenset(a.lower() for a in allowed) & _ALL_UPDATE_TYPES
            if known or not allowed:
                self._allowed_updates = known or _DEFAULT_UPDATE_TYPES
        if self.webhook is not None:
            raise _ApiError(409, WEBHOOK_CONFLICT)
        self._confirm(offset)
        if self._updates or timeout == 0 or self._closing:
            return self._updates[:limit]
        if self._poll is not None:
            self._poll.wake("conflict")
        poll = _LongPoll()
        self._poll = poll
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(poll.woken), timeout * self.time_scale)
        finally:
            if self._poll is poll:
                self._poll = None
        if poll.woken.done() and poll.woken.result() == "conflict":
            raise _ApiError(409, CONFLICT)
        if poll.woken.done() and poll.woken.result() == "webhook":
            raise _ApiError(409, WEBHOOK_CONFLICT)
        return self._updates[:limit]

    async def _deliver_webhook(self) -> None:
        """Telegram's side of a webhook: the queue, POSTed in order, retried on failure."""
        while True:
            if self.webhook is None or not self.deliver or not self._updates:
                self._delivery_wake.clear()
                await self._delivery_wake.wait()
                continue
            update = self._updates[0]
            try:
                status, _ = await self.post_update(update)
            except TimeoutError:
                status = 504
            except (OSError, aiohttp.ClientError):
                status = 0
            self.deliveries.append((int(update["update_id"]), status))
            if 200 <= status < 300:
                with contextlib.suppress(ValueError):
                    self._updates.remove(update)
            else:
                await asyncio.sleep(self.webhook_retry * self.time_scale)

    def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        url = params.get("url")
        if not isinstance(url, str):
            raise _bad('parameter "url" is required')
        if not url:
            return self._m_deleteWebhook(params)
        secret = params.get("secret_token")
        if secret is not None and not (isinstance(secret, str) and _SECRET_RE.fullmatch(secret)):
            raise _bad("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list) and all(isinstance(a, str) for a in allowed):
            known = frozenset(a.lower() for a in allowed) & _ALL_UPDATE_TYPES
            if known or not allowed:
                self._allowed_updates = known or _DEFAULT_UPDATE_TYPES
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": allowed}
        if self._poll is not None:
            self._poll.wake("webhook")
        if self._deliverer is None or self._deliverer.done():
            self._deliverer = asyncio.get_running_loop().create_task(self._deliver_webhook())
        self._delivery_wake.set()
        return True

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._updates = [u for u in self._updates if int(u["update_id"]) >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    def _m_deleteWebhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = None
        return True

    def _m_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook and self.webhook.get("allowed_updates") is not None:
            info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        chat_id: int = chat["id"]
        self._check_blocked(chat)
        text, entities = self._formatted(params)
        target = self._reply_target(chat_id, params)
        thread_id = params.get("message_thread_id")
        if thread_id is not None and not _is_int(thread_id):
            raise _bad("message thread not found")
        if thread_id is None and target is not None and chat.get("is_forum"):
            thread_id = target.thread_id
        if chat_id in self._restricted:
            self.injected_errors += 1
            raise _ApiError(400, NO_RIGHTS)
        if (chat_id, thread_id) in self._closed_topics:
            self.injected_errors += 1
            raise _ApiError(400, TOPIC_CLOSED)
        markup = self._reply_markup(params, inline_only=False)
        self._rate_check(chat_id)
        message = StoredMessage(
            chat_id=chat_id,
            message_id=self._new_message_id(chat_id),
            text=text,
            entities=entities,
            from_bot=True,
            thread_id=thread_id,
            reply_to=target.message_id if target is not None else None,
            date=int(time.time()),
            history=[text],
            reply_markup=markup,
        )
        message.raw = self._bot_raw(message)
        self._store(message)
        return self._with_reply(message)

    def _m_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id") is not None:
            raise _bad("inline messages are not supported by the fake")
        chat = self._chat(params)
        chat_id: int = chat["id"]
        if params.get("message_id") is None:
            raise _bad("message identifier is not specified")
        self._check_blocked(chat)
        message = self._live_message(chat_id, params.get("message_id"))
        if message is None:
            raise _bad("message to edit not found")
        if not message.from_bot:
            raise _bad("message can't be edited")
        text, entities = self._formatted(params)
        markup = self._reply_markup(params, inline_only=True)
        if text == message.text and entities == message.entities and markup == message.reply_markup:
            raise _ApiError(400, NOT_MODIFIED)
        self._rate_check(chat_id)
        message.text = text
        message.entities = entities
        message.reply_markup = markup
        message.edits += 1
        message.history.append(text)
        message.raw = self._bot_raw(message, edit_date=int(time.time()))
        return self._with_reply(message)

    def _m_sendChatAction(self, params: dict[str, Any]) -> bool:
        chat = self._chat(params)
        action = params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._check_blocked(chat)
        return True

    def _m_deleteMessage(self, params: dict[str, Any]) -> bool:
        chat = self._chat(params)
        message = self._live_message(chat["id"], params.get("message_id"))
        if message is None:
            raise _bad("message to delete not found")
        if not message.from_bot and chat["type"] != "private":
            raise _bad("message can't be deleted")
        message.deleted = True
        return True

    def _scope_key(self, params: dict[str, Any]) -> str:
        scope = params.get("scope") or {"type": "default"}
        if not isinstance(scope, dict) or not isinstance(scope.get("type"), str):
            raise _bad("can't parse BotCommandScope JSON object")
        kind = scope["type"]
        if kind in _SCOPES_WITHOUT_CHAT:
            key = kind
        elif kind in ("chat", "chat_administrators", "chat_member"):
            chat = self._chat({"chat_id": scope.get("chat_id")})
            if kind != "chat" and chat["type"] == "private":
                raise _bad("can't use this scope in private chats")
            key = f"{kind}:{chat['id']}"
            if kind == "chat_member":
                user_id = scope.get("user_id")
                if not _is_int(user_id) or user_id not in self._users:
                    raise _bad("user not found")
                key += f":{user_id}"
        else:
            raise _bad(f'unsupported bot command scope type "{kind}"')
        language = params.get("language_code")
        if language:
            if not re.fullmatch(r"[a-z]{2}", str(language)):
                raise _bad("invalid language code specified")
            key += f"/{language}"
        return str(key)

    def _m_setMyCommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        if not commands:
            raise _bad("commands must be non-empty (use deleteMyCommands)")
        if len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        cleaned: list[dict[str, Any]] = []
        for item in commands:
            if not isinstance(item, dict):
                raise _bad("can't parse BotCommand: object expected")
            command, description = item.get("command"), item.get("description")
            if not isinstance(command, str) or not isinstance(description, str):
                raise _bad('can\'t parse BotCommand: fields "command" and "description" required')
            if not command:
                raise _bad("command must be non-empty")
            if len(command) > 32:
                raise _bad("command is too long")
            if not re.fullmatch(r"[a-z0-9_]+", command):
                raise _bad("BOT_COMMAND_INVALID")
            if not description.strip():
                raise _bad("command description must be non-empty")
            if len(description) > 256:
                raise _bad("command description is too long")
            cleaned.append({"command": command, "description": description})
        self.commands[self._scope_key(params)] = cleaned
        return True

    def _m_deleteMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands.pop(self._scope_key(params), None)
        return True

    def _m_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(c) for c in self.commands.get(self._scope_key(params), [])]

    def _m_getChat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = dict(self._chat(params))
        chat.update(
            {
                "accent_color_id": 0,
                "max_reaction_count": 11,
                "accepted_gift_types": {
                    "unlimited_gifts": False,
                    "limited_gifts": False,
                    "unique_gifts": False,
                    "premium_subscription": False,
                    "gifts_from_channels": False,
                },
            }
        )
        return chat

    def _m_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user_id")
        if not _is_int(user_id) or user_id <= 0:
            raise _bad("invalid user_id specified")
        chat = self._chat(params)
        if chat["type"] != "private":  # a user who blocked the bot does not hide the chat
            self._check_blocked(chat)  # a group that kicked the bot does
        bot_id = self.bot_user["id"]
        user = self._bot_from() if user_id == bot_id else self._users.get(user_id)
        if user is None:
            raise _bad("user not found")
        if chat["type"] == "private":
            status = "member" if user_id in (chat["id"], bot_id) else "left"
            return self._member(user, {"status": status}, supergroup=False)
        declared = self._members.get(chat["id"], {}).get(user_id)
        if declared is None:
            if user_id == bot_id:
                declared = {"status": "restricted" if chat["id"] in self._restricted else "member"}
            else:
                declared = {"status": "left"}
        return self._member(user, declared, supergroup=chat["type"] == "supergroup")

    def _m_getChatAdministrators(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The creator and the administrators; bots other than this one only with
        ``return_bots`` (like Telegram)."""
        chat = self._chat(params)
        if chat["type"] == "private":
            raise _bad("there are no administrators in the private chat")
        self._check_blocked(chat)
        bot_id = self.bot_user["id"]
        admins = [
            (user_id, declared)
            for user_id, declared in self._members.get(chat["id"], {}).items()
            if declared["status"] in _ADMIN_STATUSES
        ]
        admins.sort(key=lambda admin: admin[1]["status"] != "creator")  # the creator first
        found = []
        for user_id, declared in admins:
            user = self._bot_from() if user_id == bot_id else self._users[user_id]
            if user["is_bot"] and user_id != bot_id and not params.get("return_bots"):
                continue
            found.append(self._member(user, declared, supergroup=chat["type"] == "supergroup"))
        return found

    def _m_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query_id = params.get("callback_query_id")
        if not query_id or query_id in self.callback_answers:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        self.callback_answers[str(query_id)] = dict(params)
        return True

    def _m_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        """Telegram's rules: private chats only, a non-zero ``draft_id``, 0-4096 characters
        (an empty text shows "Thinking…"), counted in the chat's (and the bot's) budget."""
        chat = self._chat(params)
        chat_id: int = chat["id"]
        if chat["type"] != "private":
            raise _bad("TEXTDRAFT_PEER_INVALID")
        draft_id = params.get("draft_id")
        if not _is_int(draft_id) or draft_id == 0:
            raise _bad("TEXTDRAFT_ID_INVALID")
        self._check_blocked(chat)
        entities: list[dict[str, Any]] = []
        if params.get("text") in (None, ""):
            text = ""
        else:
            text, entities = self._formatted(params)
        self._rate_check(chat_id)
        self.drafts.append(
            Draft(chat_id, draft_id, text, entities, bool(params.get("can_stop")), self.now())
        )
        return True


async def _serve(port: int, time_scale: float) -> None:  # pragma: no cover - manual use
    fake = FakeTelegram(time_scale=time_scale)
    url = await fake.start(port=port)
    print(f"fake Telegram Bot API at {url} (token {fake.token})")
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


if __name__ == "__main__":  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description="Run the fake Telegram Bot API server.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.time_scale))
