"""Ending answers that a dead process left half-written.

At startup and then every ``interval`` seconds, :class:`Recovery` looks in the
journal for answers whose owner's lease has lapsed, takes each over (so that two
sweeping processes never end the same answer twice), and ends it the way the user
would have seen it end had the process lived: the last message gets the
"interrupted" marker (and loses any inline keyboard), and the history records the
text shown so far with the marker, after the question it answered. Answers of
live owners — this process's and other replicas' — are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import LinkPreviewOptions, ReplyParameters
from redis.exceptions import RedisError

from bot.delivery.journal import Entry, Journal, digest
from bot.delivery.render import MAX_MESSAGE_UNITS, Entity, Rendered, render, utf16_len
from bot.i18n import Language, texts_for
from bot.storage.history import HistoryStore, Turn
from bot.tasks import stop_task

__all__ = ["Recovery", "with_marker"]

log = logging.getLogger(__name__)

NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)
_TRANSIENT = (TelegramRetryAfter, TelegramNetworkError, TelegramServerError)


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

    async def start(self) -> None:
        await self._journal.open()
        self._task = asyncio.create_task(self._keep_sweeping())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self._journal.aclose()

    async def _keep_sweeping(self) -> None:
        while True:
            try:
                await self.sweep()
            except RedisError as exc:
                log.warning("journal sweep failed: Redis failed (%s)", exc)
            except Exception:  # a bug must not end the sweeping for the process's life
                log.exception("journal sweep failed")
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """End every orphaned answer now; return how many were ended."""
        ended = 0
        for orphan in await self._journal.orphans():
            entry = await self._journal.claim(orphan.id)
            if entry is None:  # another process took it, or it ended
                continue
            log.info(
                "ending an answer in chat %s interrupted by the end of %s",
                entry.conversation.chat_id,
                orphan.owner or "a process",
            )
            if not await self._mark(entry):
                await self._journal.release(entry.id)  # the next sweep tries again
                continue
            await self._record(entry)
            await self._journal.end(entry.id)
            ended += 1
        return ended

    def _marker(self, entry: Entry) -> str:
        """The marker in the asker's language."""
        return texts_for(entry.language, self._default_language).interrupted_restart

    async def _mark(self, entry: Entry) -> bool:
        """Show the marker; False when Telegram should be asked again later."""
        chat_id = entry.conversation.chat_id
        marker = self._marker(entry)
        content = with_marker(entry.last, marker)
        try:
            if entry.message_ids and content.units <= MAX_MESSAGE_UNITS:
                await self._edit(entry, content)
            else:  # nothing shown yet, or no room left in the last message
                await self._send(entry, render(marker))
        except _TRANSIENT as exc:
            log.warning("interrupted answer in chat %s not marked yet: %s", chat_id, exc)
            return False
        except (TelegramForbiddenError, TelegramNotFound) as exc:
            log.info("interrupted answer in chat %s: chat unavailable (%s)", chat_id, exc)
        except TelegramAPIError as exc:
            log.warning("interrupted answer in chat %s not marked: %s", chat_id, exc)
        return True

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
            description = exc.message.lower()
            if "message is not modified" in description:
                return  # already marked
            if "message to edit not found" in description or "can't be edited" in description:
                log.info("interrupted answer in chat %s was deleted", entry.conversation.chat_id)
                return
            if content.entities:  # formatting refused: the marker in plain text still helps
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
