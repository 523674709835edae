"""Ending answers that a dead process left half-written.

At startup and then every ``interval`` seconds, :class:`Recovery` looks in the
journal for answers whose owner's lease has lapsed, takes each over (so that two
sweeping processes never end the same answer twice), and ends it the way the user
would have seen it end had the process lived: the last message gets the
"interrupted" marker (and loses any inline keyboard), and the history records the
text shown so far with the marker, after the question it answered. Answers of
live owners — this process's and other replicas' — are never touched.

The marker is an answer's last word, so it gets an answer's priority with the
scheduler: it waits for a slot like a final edit, and is never dropped as chatter.
When Telegram cannot take it now (5xx, a proxy's error page, no network, a 429
that outlasted the rate limiter), the entry is given up again for a later sweep —
the next one, then after 1, 2, 4… sweep intervals (at most ``MAX_BACKOFF``), and the
back-off is kept in the entry, so every sweeping process keeps it. After
``MAX_TRIES`` the answer is ended unmarked. A refusal (the message deleted, the
chat gone) ends it at once: asking again would change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Final

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import LinkPreviewOptions, ReplyParameters
from redis.exceptions import RedisError

from bot.delivery.budgets import Priority
from bot.delivery.journal import Entry, Journal, digest
from bot.delivery.refusals import TRANSIENT, Refusal, brief, refusal_of
from bot.delivery.render import MAX_MESSAGE_UNITS, Entity, Rendered, render, utf16_len
from bot.delivery.scheduler import Scheduler
from bot.i18n import Language, texts_for
from bot.storage.history import HistoryStore, Turn
from bot.tasks import stop_task

__all__ = ["MAX_BACKOFF", "MAX_TRIES", "Recovery", "with_marker"]

log = logging.getLogger(__name__)

NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)
# With the default 5 s sweep: tries over about a quarter of an hour of trouble.
MAX_TRIES: Final = 10
MAX_BACKOFF: Final = 300.0  # seconds


def with_marker(shown: Rendered, marker_markdown: str) -> Rendered:
    """The last message as shown, followed by the rendered marker (like the bot's
    other markers, after a blank line and outside any formatting of the text)."""
    marker = render(marker_markdown)
    if not shown.text:
        return marker
    head = shown.text + "\n\n"
    shift = utf16_len(head)
    moved = tuple(Entity(e.type, e.offset + shift, e.length, e.extra) for e in marker.entities)
    return Rendered(head + marker.text, shown.entities + moved)


# Seconds a stopping sweeper gives the sweep under way to finish.
STOP_GRACE: Final = 5.0


class Recovery:
    """The sweeper. ``start`` and ``stop`` are the dispatcher's startup and shutdown hooks."""

    def __init__(
        self,
        bot: Bot,
        journal: Journal,
        history: HistoryStore,
        *,
        interval: float,
        default_language: Language = "en",
    ) -> None:
        self._bot, self._journal, self._history = bot, journal, history
        self._interval = interval
        self._default_language: Language = default_language
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._journal.open()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._keep_sweeping())

    async def stop(self) -> None:
        # The sweep under way finishes first (up to STOP_GRACE): cancelled between its
        # marker and its history record, it would leave the answer claimed, marked but
        # not recorded, for the next process. Then, as ever, it is cancelled.
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=STOP_GRACE)
        await stop_task(self._task)
        self._task = None
        await self._journal.aclose()

    async def _keep_sweeping(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:  # a bug must not end the sweeping for the process's life
                log.exception("journal sweep failed")
            try:
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def sweep(self) -> int:
        """End every orphaned answer that is due now; return how many were ended."""
        ended = 0
        try:
            for orphan in await self._journal.orphans():
                if orphan.retry_at > time.time():  # its last try failed: backing off
                    continue
                entry = await self._journal.claim(orphan.id)
                if entry is None:  # another process took it, or it ended
                    continue
                if entry.retry_at > time.time():  # another process tried it meanwhile
                    await self._journal.release(entry)
                    continue
                if not entry.tries:
                    log.info(
                        "ending an answer in chat %s interrupted by the end of %s",
                        entry.conversation.chat_id,
                        orphan.owner or "a process",
                    )
                if await self._end(entry):
                    ended += 1
        except RedisError as exc:  # the entries wait in the journal for a sweep that works
            log.warning("journal sweep failed: Redis failed (%s)", exc)
        return ended

    async def _end(self, entry: Entry) -> bool:
        """Mark, record and forget ``entry``; False when it waits for a later try."""
        try:
            await self._mark(entry)
        except Exception as exc:
            tries = entry.tries + 1
            chat_id = entry.conversation.chat_id
            if isinstance(exc, TRANSIENT):
                reason = brief(exc)
            else:  # a bug: its traceback, and the entry tried again like the others
                log.exception("marking an interrupted answer in chat %s failed", chat_id)
                reason = type(exc).__name__
            if tries < MAX_TRIES:
                wait = self._backoff(tries, exc)
                log.warning(
                    "interrupted answer in chat %s not marked yet (%s); trying again in %.0f s",
                    chat_id,
                    reason,
                    wait,
                )
                retry_at = time.time() + wait  # Unix time: any process may read it
                await self._journal.release(replace(entry, tries=tries, retry_at=retry_at))
                return False
            log.warning(
                "interrupted answer in chat %s not marked after %d tries (%s); giving up",
                chat_id,
                tries,
                reason,
            )
        await self._record(entry)
        await self._journal.end(entry.id)
        return True

    def _backoff(self, tries: int, exc: Exception) -> float:
        """Seconds before the next try after ``tries`` failed ones: none after the
        first (the next sweep is an interval away anyway), then doubling."""
        wait = 0.0 if tries == 1 else min(self._interval * 2 ** (tries - 2), MAX_BACKOFF)
        if isinstance(exc, TelegramRetryAfter):  # the chat is blocked that long anyway
            wait = max(wait, float(exc.retry_after))
        return wait

    def _marker(self, entry: Entry) -> str:
        """The marker in the asker's language."""
        return texts_for(entry.language, self._default_language).interrupted_restart

    async def _mark(self, entry: Entry) -> None:
        """Show the marker, or learn that it cannot be shown; raises what may go
        through later (:data:`~bot.delivery.refusals.TRANSIENT`)."""
        chat_id = entry.conversation.chat_id
        marker = self._marker(entry)
        content = with_marker(entry.last, marker)
        try:
            with Scheduler.calls_as(Priority.ANSWER):
                if entry.message_ids and content.units <= MAX_MESSAGE_UNITS:
                    await self._edit(entry, content)
                else:  # nothing shown yet, or no room left in the last message
                    await self._send(entry, render(marker))
        except TRANSIENT:
            raise
        except (TelegramBadRequest, TelegramForbiddenError, TelegramNotFound) as exc:
            match refusal_of(exc):
                case Refusal.MESSAGE_GONE:
                    log.info("interrupted answer in chat %s was deleted", chat_id)
                case Refusal.CHAT_GONE | Refusal.NO_RIGHTS | Refusal.TOPIC_GONE:
                    log.info("interrupted answer in chat %s: chat unavailable (%s)", chat_id, exc)
                case _:
                    log.warning("interrupted answer in chat %s not marked: %s", chat_id, exc)
        except TelegramAPIError as exc:  # an unknown status: asking again would not help
            log.warning("interrupted answer in chat %s not marked: %s", chat_id, exc)

    async def _edit(self, entry: Entry, content: Rendered) -> None:
        try:
            # No reply_markup: an edit without one removes the message's inline keyboard.
            await self._bot.edit_message_text(
                text=content.text,
                chat_id=entry.conversation.chat_id,
                message_id=entry.message_ids[-1],
                entities=content.aiogram_entities(),
                link_preview_options=NO_PREVIEW,
                parse_mode=None,
            )
        except TelegramBadRequest as exc:
            refusal = refusal_of(exc)
            if refusal is Refusal.NOT_MODIFIED:
                return  # already marked
            if refusal in (Refusal.BAD_ENTITIES, Refusal.OTHER) and content.entities:
                # The marker in plain text still helps.
                await self._edit(entry, content.plain())
                return
            raise

    async def _send(self, entry: Entry, content: Rendered) -> None:
        target = entry.message_ids[-1] if entry.message_ids else entry.reply_to
        await self._bot.send_message(
            entry.conversation.chat_id,
            content.text,
            entities=content.aiogram_entities(),
            reply_parameters=(
                ReplyParameters(message_id=target, allow_sending_without_reply=True)
                if target is not None
                else None
            ),
            message_thread_id=entry.conversation.thread_id,
            link_preview_options=NO_PREVIEW,
            parse_mode=None,
        )

    async def _record(self, entry: Entry) -> None:
        """The answer as the user saw it goes into the history right after its
        question, unless the conversation has moved on (a reset, an answer since).
        A prompt that started meanwhile (on another replica, as the lease lapsed)
        stays after it."""
        conversation = entry.conversation
        answer = Turn(role="assistant", content=entry.markdown + self._marker(entry))
        if entry.asker is not None:
            answer["asker"] = entry.asker
        try:
            recorded = await self._history.answer_after(
                conversation, entry.asker, lambda text: digest(text) == entry.question, answer
            )
        except RedisError as exc:  # the user sees the marker; only the memory of it is lost
            log.warning("interrupted answer in chat %s not stored: %s", conversation.chat_id, exc)
            return
        if not recorded:
            log.info("interrupted answer in chat %s: history moved on", conversation.chat_id)
