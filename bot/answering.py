"""Answering prompts: history in, streamed reply out, one at a time per conversation.

:class:`Answerer` ties the pieces together for a handler: it keeps each
conversation's line (FIFO, at most ``max_waiting`` waiting), loads the history,
builds the prompt within ``prompt_max_chars``, streams the provider's answer
through a :class:`~bot.streaming.StreamingReply`, and records the answer —
including its marker when it was stopped or interrupted, so the model later sees
what the user saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.types import Message as TgMessage
from redis.exceptions import RedisError

from gptalk import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    GPTalkError,
    Message,
    StreamInterruptedError,
    TokenStoreError,
    format_prompt,
)

from .delivery.journal import Entry, InFlight, Journal, MemoryJournal
from .queue import KeyedLock, Line, LineDroppedError
from .ratelimit import Limiters
from .storage.history import HistoryStore
from .storage.keys import ConversationKey
from .storage.stats import MemoryStats, Stats
from .storage.user_limits import UserLimits, Verdict
from .streaming import ChatUnavailableError, StreamingReply

__all__ = ["LLM", "Answerer", "build_prompt", "notice_for"]

log = logging.getLogger(__name__)

STOPPED = "\n\n⏹ _Stopped._"
RESET = "\n\n⏹ _Stopped: the conversation was reset._"
SHUTDOWN = "\n\n⏹ _Interrupted: the bot is restarting. Send /retry in a moment._"
EMPTY = "🤷 The model returned an empty answer. Try /retry or rephrase."
BUSY = "⏳ I'm still answering your previous messages; send this one again in a moment."
BUSY_GROUP = "⏳ I'm still answering earlier questions here; ask again in a moment."
SLOW_DOWN = "🐢 You're sending messages faster than I can answer. Try again in {seconds} s."
NOTHING_TO_RETRY = "There is nothing to retry yet: send me a message first."
RESTARTING = "🔄 The bot is restarting and skipped this message: please send it again in a minute."


class LLM(Protocol):
    """What the bot needs from a text-generation provider."""

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]: ...


def notice_for(error: GPTalkError) -> str:
    """A short, readable notice (Markdown) that ends an answer cut short by ``error``."""
    if isinstance(error, APITimeoutError):
        text = (
            "⚠️ _GPTalk stopped responding, so the answer is incomplete. Send /retry to try again._"
        )
    elif isinstance(error, TokenStoreError):
        text = "⚠️ _I'm temporarily unavailable (storage is down). Send /retry in a minute._"
    elif isinstance(error, StreamInterruptedError):
        text = "⚠️ _The answer was cut off by GPTalk. Send /retry to try again._"
    elif isinstance(error, APIStatusError | APIConnectionError):
        text = "⚠️ _GPTalk is unavailable right now. Send /retry in a minute._"
    else:
        text = "⚠️ _GPTalk sent an answer I could not read. Send /retry to try again._"
    return "\n\n" + text


def build_prompt(system: str, history: Sequence[Message], max_chars: int) -> list[Message]:
    """System message + as much history as fits ``max_chars`` (as formatted for the
    provider), dropping the oldest turns first. The last message is always kept."""
    head: list[Message] = [Message(role="system", content=system)] if system else []
    turns = list(history)
    while len(turns) > 1 and len(format_prompt([*head, *turns])) > max_chars:
        turns.pop(0)
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns.pop(0)  # a turn starts with the user
    return [*head, *turns]


@dataclass
class _Generation:
    reply: StreamingReply
    discard: bool = False  # the conversation was reset: do not record the answer


@dataclass
class Answerer:
    llm: LLM
    history: HistoryStore
    limiters: Limiters
    system_prompt: str = ""
    prompt_max_chars: int = 12000
    max_waiting: int = 3
    typing_interval: float = 4.0
    stats: Stats = field(default_factory=MemoryStats)
    user_limits: UserLimits | None = None  # USER_RATE_LIMIT; None = off
    unlimited_users: frozenset[int] = frozenset()  # admins
    journal: Journal = field(default_factory=MemoryJournal)  # answers in flight
    _line: Line[ConversationKey] = field(init=False)
    _gate: KeyedLock[ConversationKey] = field(init=False, default_factory=KeyedLock)
    _running: dict[ConversationKey, _Generation] = field(init=False, default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _closing: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._line = Line(self.max_waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    async def prompt(
        self, bot: Bot, message: TgMessage, conversation: ConversationKey, text: str
    ) -> None:
        """Answer ``text`` (the user's turn) in ``conversation``, replying to ``message``."""
        await self._answer(bot, message, conversation, Message(role="user", content=text))

    async def retry(self, bot: Bot, message: TgMessage, conversation: ConversationKey) -> None:
        """Regenerate the answer to the last user message, as a new reply."""
        await self._answer(bot, message, conversation, None)

    def stop(self, conversation: ConversationKey, suffix: str = STOPPED) -> bool:
        """Stop the running answer; True when there was one."""
        generation = self._running.get(conversation)
        if generation is None:
            return False
        generation.reply.stop(suffix)
        return True

    async def reset(self, conversation: ConversationKey) -> None:
        """Forget the conversation and stop its running answer."""
        generation = self._running.get(conversation)
        if generation is not None:
            generation.discard = True
            generation.reply.stop(RESET)
        await self.history.clear(conversation)
        await self.journal.forget(conversation)

    async def drain(self, grace: float) -> None:
        """On shutdown: let running answers finish for ``grace`` seconds, then stop
        them (their text so far is delivered, marked) and wait for that."""
        self._closing = True  # prompts still waiting in line are not started any more
        tasks = set(self._tasks)
        if not tasks:
            return
        log.info("waiting up to %s s for %d running answer(s)", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for conversation in list(self._running):
                self.stop(conversation, SHUTDOWN)
            _, pending = await asyncio.wait(pending, timeout=10)
            for task in pending:
                task.cancel()

    async def _answer(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
    ) -> None:
        # The gate keeps a conversation's prompts in arrival order through the
        # rate-limit check, up to taking a place in the line.
        async with self._gate.hold(conversation):
            if not await self._within_rate_limit(message):
                return
            ticket = self._line.enter(conversation)
        if ticket is None:
            await message.reply(BUSY if message.chat.type == ChatType.PRIVATE else BUSY_GROUP)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with ticket:
                if self._closing:
                    await message.reply(RESTARTING)
                    return
                try:
                    await self._generate(bot, message, conversation, user_turn)
                except ChatUnavailableError as exc:
                    # Dropped while this ticket still holds the turn, so that no
                    # queued prompt starts for a chat that cannot be written to.
                    log.warning(
                        "chat %s is unavailable (%s); dropping its queue", message.chat.id, exc
                    )
                    self._line.drop(conversation)
        except LineDroppedError:
            pass
        finally:
            self._tasks.discard(task)

    async def _within_rate_limit(self, message: TgMessage) -> bool:
        user = message.from_user
        if self.user_limits is None or user is None or user.id in self.unlimited_users:
            return True
        decision = await self.user_limits.hit(user.id)
        if decision.verdict is Verdict.NOTIFY:
            await message.reply(SLOW_DOWN.format(seconds=max(1, round(decision.retry_in))))
        return decision.verdict is Verdict.ALLOW

    async def _generate(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
    ) -> None:
        if user_turn is None:  # /retry
            await self.history.pop_answer(conversation)
            turns = await self.history.load(conversation)
            if not turns or turns[-1]["role"] != "user":
                await message.reply(NOTHING_TO_RETRY)
                return
        else:
            turns = [*await self.history.load(conversation), user_turn]
            await self.history.append(conversation, user_turn)
        prompt = build_prompt(self.system_prompt, turns, self.prompt_max_chars)

        language = message.from_user.language_code if message.from_user else None
        entry = Entry.new(
            conversation,
            reply_to=message.message_id,
            question=turns[-1]["content"],
            language=language,
        )
        flight = InFlight(self.journal, entry)
        await flight.begin()
        reply = StreamingReply(
            bot,
            self.limiters.for_chat(message.chat.id),
            message.chat.id,
            reply_to=message.message_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            empty_notice=EMPTY,
            typing_interval=self.typing_interval,
            on_progress=flight.progress,
        )
        generation = _Generation(reply)
        self._running[conversation] = generation
        await self.stats.incr("requests")
        await self.stats.set_active(len(self._running))
        started = time.monotonic()
        try:
            delivered = await reply.run(self._deltas(prompt))
        finally:
            if self._running.get(conversation) is generation:
                del self._running[conversation]
            await self.stats.set_active(len(self._running))
            # Cancelled (the process is going away mid-answer): the entry stays, and
            # recovery marks the answer interrupted.
            if not _cancelling():
                await flight.end()
        log.info(
            "answered in chat %s: %d chars, %d message(s), %.1f s",
            message.chat.id,
            len(delivered.markdown),
            len(delivered.message_ids),
            time.monotonic() - started,
        )
        if delivered.markdown.strip() and not generation.discard:
            try:
                await self.history.append(
                    conversation, Message(role="assistant", content=delivered.markdown)
                )
            except RedisError as exc:  # the user has the answer; only the memory of it is lost
                log.warning("answer in chat %s not stored: Redis failed (%s)", message.chat.id, exc)

    async def _deltas(self, prompt: list[Message]) -> AsyncIterator[str]:
        stream = self.llm.stream(prompt)
        try:
            async for delta in stream:
                yield delta
        except GPTalkError as exc:
            log.warning("GPTalk failed: %s", exc)
            await self.stats.incr("failures")
            yield notice_for(exc)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # release the HTTP response now, also when stopped
                await aclose()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
