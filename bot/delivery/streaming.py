"""The streaming reply: one growing answer, shown in Telegram as it is written.

:class:`StreamingReply` consumes an async iterator of text deltas (it knows nothing
about where they come from), sends the first message as soon as there is visible
text and edits it in place, within the chat's rate limits:

* every call waits for a slot of the bot-wide :class:`~bot.delivery.scheduler.Scheduler`;
  the content is chosen only once the slot is granted, so a slow budget coalesces
  many deltas into one edit of the newest text;
* first messages, parts that just filled up and the final edit have the
  ``ANSWER`` priority; intermediate edits ``EDIT`` (edit interval, budget reserve),
  promoted while they wait when the stream ends or the open part fills up;
* an edit is made only when what Telegram would store (trimmed text and entities)
  changes;
* Markdown is rendered to entities; if Telegram rejects them, that message falls
  back to plain text;
* text beyond 4096 UTF-16 units continues in new messages; a full part is given
  its final content once and not edited again;
* a 429 blocks the chat in the scheduler and the newest text goes out afterwards; a
  deleted message is replaced by a new one;
* any other failure (5xx, a gateway's HTML page, a status code we do not know) is
  retried with back-off for up to ``GIVE_UP_AFTER`` seconds;
* a group that became a supergroup: the answer continues in the new chat;
* a chat or topic the bot may not write to ends the answer at once
  (:class:`NoRightsError`), so that no more of it is generated for nobody;
* with ``stop_markup`` the newest message carries that keyboard (the Stop button)
  while the stream runs: it rides on the sends and edits made anyway, and the final
  edit of each message takes it off (made even when the text did not change);
* with ``draft`` (private chats) the open part streams as a ``sendMessageDraft``
  with the native stop button, at most one per ``draft_interval``, refreshed while
  the model is silent; parts that fill up and the end go out as real messages. A
  draft failing other than with a 429 switches the answer to edits.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import InlineKeyboardMarkup, LinkPreviewOptions, ReplyParameters

from .budgets import Priority
from .layout import StreamLayout
from .refusals import Refusal, refusal_of
from .refusals import brief as _brief
from .render import MAX_MESSAGE_UNITS, Rendered, utf16_len
from .scheduler import Scheduler, SlotRequest

__all__ = ["ChatUnavailableError", "Delivered", "NoRightsError", "Progress", "StreamingReply"]

log = logging.getLogger(__name__)

NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

# Called after each message sent or edited: the ids of the answer's messages, the
# Markdown consumed so far, and the last message as Telegram shows it now.
Progress = Callable[[tuple[int, ...], str, Rendered], Awaitable[None]]


class ChatUnavailableError(Exception):
    """The bot can no longer write to this chat (blocked, kicked, chat deleted)."""


class NoRightsError(ChatUnavailableError):
    """The bot is in the chat but may not write there (restricted), or not in this forum
    topic (``topic``: closed or deleted), until an admin changes that."""

    def __init__(self, description: str, *, topic: bool = False) -> None:
        super().__init__(description)
        self.topic = topic


class _UndeliverableError(Exception):
    """Telegram refuses this text even as plain text: nothing more to try."""


@dataclass(frozen=True)
class Delivered:
    """What the user got."""

    message_ids: tuple[int, ...]  # in the old chat and then the new one, if it migrated
    chat_id: int  # where the answer ended: a new supergroup's id if the group migrated
    markdown: str  # the whole text consumed from the stream (with the stop suffix)
    visible: str  # the text of the messages as Telegram shows it, parts joined by "\n"
    stopped: bool = False


@dataclass
class _Shown:
    message_id: int
    content: Rendered  # what Telegram stores now
    button: bool = False  # whether it carries the stop keyboard


@dataclass(frozen=True)
class _Step:
    index: int  # == number of messages shown: a new message (or the draft)
    content: Rendered
    button: bool  # with the stop keyboard
    draft: bool = False  # the open part, as a draft


class StreamingReply:
    """Stream one answer into a chat. Use once: ``await StreamingReply(...).run(deltas)``."""

    GIVE_UP_AFTER = 180.0  # seconds of nothing but failed calls before giving up
    MAX_REFUSALS = 3  # times an edit of the same text may be refused (400) before we skip it

    def __init__(
        self,
        bot: Bot,
        scheduler: Scheduler,
        chat_id: int,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        empty_notice: str = "(empty answer)",
        typing_interval: float = 4.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 10.0,
        on_progress: Progress | None = None,
        stop_markup: InlineKeyboardMarkup | None = None,
        draft: bool = False,
        draft_interval: float = 1.0,
        draft_refresh: float = 20.0,
    ) -> None:
        self._bot, self._scheduler, self._chat_id = bot, scheduler, chat_id
        self._reply_to, self._thread_id = reply_to, thread_id
        self._empty = Rendered(empty_notice)
        self._typing_interval = typing_interval
        self._retry_delay, self._max_retry_delay = retry_delay, max_retry_delay
        self._on_progress = on_progress
        self._chunks: list[str] = []
        self._changed = asyncio.Event()
        self._done = False
        self._want = Priority.ANSWER
        self._pending: SlotRequest | None = None  # the slot the next call waits for
        # Characters the open (last) part can still take before it fills up, and
        # those received since it was laid out: a cheap, conservative sign that a
        # waiting intermediate edit has become the sending of a full part.
        self._room = MAX_MESSAGE_UNITS
        self._unplanned = 0
        self._shown: list[_Shown] = []
        self.edits = 0  # editMessageText calls made
        self._plain: set[int] = set()  # parts whose entities Telegram rejected
        # Edits Telegram refused for no known reason: (content, times refused).
        self._refused: dict[int, tuple[Rendered, int]] = {}
        # Parts that filled up are fixed while the stream runs, so that later text
        # cannot move their boundaries; only the open tail is rendered for each edit.
        self._parts = StreamLayout()
        self._pump: asyncio.Task[None] | None = None
        self._stop_suffix: str | None = None
        self._layout_cache: tuple[tuple[int, bool], list[Rendered]] | None = None
        self._markup = stop_markup
        # Drafts: durations are Telegram seconds, scaled like the scheduler's.
        self._draft = draft
        self.draft_id = secrets.randbelow(2**31 - 1) + 1  # must be non-zero
        scale = scheduler.limits.time_scale
        self._draft_interval, self._draft_refresh = draft_interval * scale, draft_refresh * scale
        self._drafted: Rendered | None = None  # what the draft shows
        self._drafted_at = 0.0  # loop time of the last draft
        self._ended = asyncio.Event()  # set with _done: a draft's gap need not be waited out

    @property
    def markdown(self) -> str:
        return "".join(self._chunks)

    @property
    def message_ids(self) -> tuple[int, ...]:
        """The messages showing the answer so far."""
        return tuple(shown.message_id for shown in self._shown)

    def stop(self, suffix: str) -> bool:
        """Stop reading the stream (closing it); the answer so far ends with ``suffix``.

        Works before and during :meth:`run`; after the stream ended it changes nothing
        (and returns False).
        """
        if self._stop_suffix is None and not self._done:
            self._stop_suffix = suffix
            if self._pump is not None:
                self._pump.cancel()
            return True
        return False

    async def run(self, deltas: AsyncIterator[str]) -> Delivered:
        """Consume ``deltas`` and deliver them; return what was delivered.

        Raises :class:`ChatUnavailableError` when the chat cannot be written to
        (:class:`NoRightsError` when it is for lack of rights; the stream is closed
        then). An exception from ``deltas`` is re-raised after the text so far is
        delivered.
        """
        self._pump = pump = asyncio.create_task(self._read(deltas))
        pump.add_done_callback(self._finish)
        if self._stop_suffix is not None:
            pump.cancel()  # stopped before it started
        typing = asyncio.create_task(self._keep_typing())
        try:
            await self._deliver_all(typing)
        finally:
            typing.cancel()
            if not pump.done():
                pump.cancel()
            await asyncio.gather(typing, pump, return_exceptions=True)
        if not pump.cancelled() and (error := pump.exception()) is not None:
            raise error
        return Delivered(
            message_ids=self.message_ids,
            chat_id=self._chat_id,
            markdown=self.markdown,
            visible="\n".join(shown.content.text for shown in self._shown),
            stopped=self._stop_suffix is not None,
        )

    async def _read(self, deltas: AsyncIterator[str]) -> None:
        try:
            async for delta in deltas:
                self._chunks.append(delta)
                self._changed.set()
                self._unplanned += len(delta)
                if self._unplanned > self._room and self._pending is not None:
                    self._pending.promote(Priority.ANSWER)
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()

    def _finish(self, _: object = None) -> None:
        # A done-callback of the reading task: runs however it ended, even when it
        # was cancelled before its first step (its finally clauses never ran then).
        if self._done:
            return
        if self._stop_suffix is not None:
            self._chunks.append(self._stop_suffix)
        self._done = True
        self._changed.set()
        self._ended.set()
        if self._pending is not None:  # a waiting intermediate edit is now the final one
            self._pending.promote(Priority.ANSWER)

    async def _keep_typing(self) -> None:
        while True:
            try:
                await self._bot.send_chat_action(
                    self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
                )
            except (TelegramForbiddenError, TelegramRetryAfter):
                return
            except (TelegramAPIError, ClientDecodeError) as exc:
                log.debug("chat action failed in chat %s: %s", self._chat_id, _brief(exc))
            await asyncio.sleep(self._typing_interval)

    def _priority(self) -> Priority:
        return Priority.ANSWER if self._done else self._want

    async def _deliver_all(self, typing: asyncio.Task[None]) -> None:
        failing_since: float | None = None
        delay = self._retry_delay
        while True:
            if not self._done:
                await self._wait_for_text()
            if (planned := self._plan()) is None:
                if self._done:
                    return
                continue
            if planned.draft and await self._draft_gap():
                self._plan()  # the stream ended meanwhile: a real message, of higher priority
            slot = self._pending = self._scheduler.request(self._chat_id, self._priority())
            try:
                await self._scheduler.wait(slot)
            finally:
                self._pending = None
            try:
                step = self._plan()  # again: the newest text, now that we have a slot
                if step is None:
                    continue
                delivered = await self._deliver(step)
            except _UndeliverableError as exc:
                log.error("Telegram refused the answer in chat %s: %s", self._chat_id, exc)
                return
            finally:
                await self._scheduler.settle(slot)
            if delivered:
                failing_since, delay = None, self._retry_delay
                typing.cancel()
                continue
            # Telegram unreachable or refusing: back off, keep the newest text, and
            # give up only after a long outage (the answer is lost then, and logged).
            now = asyncio.get_running_loop().time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since > self.GIVE_UP_AFTER:
                log.error("giving up on the answer in chat %s", self._chat_id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay)

    def _layout(self) -> list[Rendered]:
        """The messages the answer should be now (rendered again only when the text
        grew or the stream ended: planning happens twice per call)."""
        key = (len(self._chunks), self._done)
        if self._layout_cache is not None and self._layout_cache[0] == key:
            return self._layout_cache[1]
        parts = self._compute_layout()
        self._layout_cache = (key, parts)
        self._room = MAX_MESSAGE_UNITS - (utf16_len(parts[-1].text) if parts else 0)
        self._unplanned = 0
        return parts

    def _compute_layout(self) -> list[Rendered]:
        parts = self._parts.layout(self.markdown, done=self._done)
        if not parts and self._done:
            parts = [self._empty]
        return parts

    def _plan(self) -> _Step | None:
        """The next message to send (index == number shown) or edit, or None."""
        parts = self._layout()
        for index, content in enumerate(parts):
            wanted = content.plain() if index in self._plain else content
            last = index == len(parts) - 1
            # The stop keyboard is on the newest message while the stream runs.
            button = self._markup is not None and last and not self._done and not self._draft
            if index == len(self._shown):
                if self._draft and last and not self._done:
                    if wanted == self._drafted and not self._refresh_due():
                        return None
                    # The first draft is the answer's first sight, like a first message.
                    first = not self._shown and self._drafted is None
                    self._want = Priority.ANSWER if first else Priority.EDIT
                    return _Step(index, wanted, button=False, draft=True)
                self._want = Priority.ANSWER
                return _Step(index, wanted, button)
            shown = self._shown[index]
            changed = wanted != shown.content or button != shown.button
            if changed and not self._given_up(index, wanted):
                self._want = Priority.EDIT if last and not self._done else Priority.ANSWER
                return _Step(index, wanted, button)
        return None

    # --- drafts -------------------------------------------------------------------------

    async def _wait_for_text(self) -> None:
        """Until the text changed; with a draft showing, at most until it needs a refresh."""
        timeout = None
        if self._draft and self._drafted is not None:
            timeout = max(0.0, self._drafted_at + self._draft_refresh - self._loop_time())
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass
        self._changed.clear()

    def _refresh_due(self) -> bool:
        # A draft lives about 30 s: renewed after draft_refresh without new text.
        return self._loop_time() >= self._drafted_at + self._draft_refresh

    async def _draft_gap(self) -> bool:
        """At most one draft per interval: wait for the gap since the last one, or
        for the end of the stream (True then: the answer's real message may go now)."""
        gap = self._drafted_at + self._draft_interval - self._loop_time()
        if gap > 0 and not self._done:
            try:
                async with asyncio.timeout(gap):
                    await self._ended.wait()
            except TimeoutError:
                return False
        return self._done

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _send_draft(self, content: Rendered) -> None:
        await self._bot.send_message_draft(
            chat_id=self._chat_id,
            draft_id=self.draft_id,
            text=content.text,
            entities=content.aiogram_entities(),
            message_thread_id=self._thread_id,
            parse_mode=None,
            can_stop=True,
            # Kept until our real message replaces it, so that stopping does not blink.
            keep_on_stop=True,
        )
        self._drafted, self._drafted_at = content, self._loop_time()

    async def _deliver_draft(self, content: Rendered) -> bool:
        try:
            with Scheduler.paced():
                await self._send_draft(content)
        except TelegramRetryAfter:
            pass  # the whole chat cools down in the scheduler; never a send meanwhile
        except (TelegramAPIError, ClientDecodeError) as exc:
            # An old client, a Bot API without drafts, a rejected text: the answer
            # goes on with edits, and its open part goes out as a new message.
            log.warning(
                "draft failed in chat %s (%s); streaming by edits", self._chat_id, _brief(exc)
            )
            self._draft = False
        return True

    # --- messages -----------------------------------------------------------------------

    def _given_up(self, index: int, content: Rendered) -> bool:
        refused, count = self._refused.get(index, (None, 0))
        return refused == content and count >= self.MAX_REFUSALS

    async def _deliver(self, step: _Step) -> bool:
        """Make one call; return whether the answer's state moved forward."""
        if step.draft:
            return await self._deliver_draft(step.content)
        index, content = step.index, step.content
        try:
            with Scheduler.paced():
                if index == len(self._shown):
                    await self._send(content, step.button)
                else:
                    await self._edit(index, content, step.button)
            return True
        except TelegramRetryAfter:
            return True  # the chat is blocked; the newest text goes out after it
        except TelegramMigrateToChat as exc:
            self._move_to(exc.migrate_to_chat_id)
            return True
        except TelegramBadRequest as exc:
            return self._bad_request(step, exc)
        except (TelegramForbiddenError, TelegramNotFound) as exc:
            raise ChatUnavailableError(str(exc)) from exc
        except (TelegramAPIError, ClientDecodeError) as exc:
            # Network errors, 5xx (also as a gateway's HTML page) and whatever else
            # Telegram may answer: retried with back-off, bounded by GIVE_UP_AFTER.
            log.warning("Telegram call failed in chat %s: %s", self._chat_id, _brief(exc))
            return False

    def _move_to(self, chat_id: int) -> None:
        """The group became a supergroup: the answer continues there.

        The messages shown so far stay in the old chat, where they can no longer be
        edited: parts they show completely are kept, the rest of the answer (the
        unfinished part with all its text so far) goes out as new messages.
        """
        log.info("chat %s became supergroup %s; the answer continues there", self._chat_id, chat_id)
        self._chat_id = chat_id  # the scheduler paces the new chat from the next call on
        # The message replied to is in the old chat, and a migrated group has no topics.
        self._reply_to = self._thread_id = None
        parts = self._layout()
        kept = 0
        for index, shown in enumerate(self._shown[: len(parts)]):
            wanted = parts[index].plain() if index in self._plain else parts[index]
            complete = index < len(parts) - 1 or self._done
            if not complete or shown.content != wanted:
                break
            kept = index + 1
        del self._shown[kept:]
        self._plain = {index for index in self._plain if index < kept}
        self._refused = {i: refused for i, refused in self._refused.items() if i < kept}

    async def _send(self, content: Rendered, button: bool) -> None:
        first = not self._shown
        reply = (
            ReplyParameters(message_id=self._reply_to, allow_sending_without_reply=True)
            if first and self._reply_to is not None
            else None
        )
        message = await self._bot.send_message(
            self._chat_id,
            content.text,
            entities=content.aiogram_entities(),
            reply_parameters=reply,
            message_thread_id=self._thread_id,
            link_preview_options=NO_PREVIEW,
            parse_mode=None,
            reply_markup=self._markup if button else None,
        )
        self._shown.append(_Shown(message.message_id, content, button))
        await self._progressed()

    async def _edit(self, index: int, content: Rendered, button: bool) -> None:
        shown = self._shown[index]
        self.edits += 1  # the metrics' edits per answer
        # Without reply_markup an edit takes the keyboard off: the final edit does.
        await self._bot.edit_message_text(
            text=content.text,
            chat_id=self._chat_id,
            message_id=shown.message_id,
            entities=content.aiogram_entities(),
            link_preview_options=NO_PREVIEW,
            parse_mode=None,
            reply_markup=self._markup if button else None,
        )
        shown.content, shown.button = content, button
        await self._progressed()

    async def _progressed(self) -> None:
        if self._on_progress is not None:
            ids = tuple(shown.message_id for shown in self._shown)
            await self._on_progress(ids, self.markdown, self._shown[-1].content)

    def _bad_request(self, step: _Step, exc: TelegramBadRequest) -> bool:
        index, content = step.index, step.content
        description, refusal = exc.message.lower(), refusal_of(exc)
        if refusal is Refusal.NO_RIGHTS:
            raise NoRightsError(description)
        if refusal is Refusal.TOPIC_GONE:
            raise NoRightsError(description, topic=self._thread_id is not None)
        if refusal is Refusal.CHAT_GONE:
            raise ChatUnavailableError(description)
        if refusal is Refusal.BAD_ENTITIES and content.entities:
            log.warning("Telegram rejected our formatting in chat %s; plain text", self._chat_id)
            self._plain.add(index)
            return True
        if index < len(self._shown):
            shown = self._shown[index]
            if refusal is Refusal.NOT_MODIFIED:
                shown.content, shown.button = content, step.button
                return True
            if refusal is Refusal.MESSAGE_GONE:
                log.info("message %s in chat %s is gone", shown.message_id, self._chat_id)
                if index == len(self._shown) - 1:
                    del self._shown[index]  # the text it showed goes out in a new message
                else:
                    shown.content = content  # an earlier part: the user removed it, fine
                return True
        if content.entities:  # unknown trouble: plain text is the safest next try
            log.warning(
                "Telegram refused a message in chat %s (%s); plain text", self._chat_id, description
            )
            self._plain.add(index)
            return True
        if index < len(self._shown):
            # Try this version a few times; after that only a newer text is tried.
            log.error("Telegram refused an edit in chat %s: %s", self._chat_id, description)
            previous, count = self._refused.get(index, (content, 0))
            self._refused[index] = (content, count + 1 if previous == content else 1)
            return True
        raise _UndeliverableError(description)
