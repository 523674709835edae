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
import enum
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.types import InlineKeyboardMarkup
from aiogram.types import Message as TgMessage
from redis.exceptions import RedisError

from gptalk import Message, format_prompt

from .conversation.gate import KeyedLock
from .conversation.line import Line, LineDroppedError
from .delivery.scheduler import Scheduler
from .providers import LLM, ProviderError, notice_for
from .storage.history import HistoryStore, Turn
from .storage.keys import ConversationKey
from .storage.stats import MemoryStats, Stats
from .storage.user_limits import Decision, UserLimits, Verdict
from .streaming import ChatUnavailableError, NoRightsError, StreamingReply
from .unwritable import Unwritable

__all__ = ["LLM", "Answerer", "StopOutcome", "asker_of", "build_prompt", "notice_for"]

log = logging.getLogger(__name__)

STOPPED = "\n\n⏹ _Stopped._"
RESET = "\n\n⏹ _Stopped: the conversation was reset._"
SHUTDOWN = "\n\n⏹ _Interrupted: the bot is restarting. Send /retry in a moment._"
EMPTY = "🤷 The model returned an empty answer. Try /retry or rephrase."
BUSY = "⏳ I'm still answering your previous messages; send this one again in a moment."
BUSY_GROUP = "⏳ I'm still answering earlier questions here; ask again in a moment."
SLOW_DOWN = "🐢 You're sending messages faster than I can answer. Try again in {seconds} s."
NOTHING_TO_RETRY = "There is nothing to retry yet: send me a message first."
PROVIDER_FAILED = (
    "\n\n⚠️ _Something went wrong while writing this answer. Send /retry to try again._"
)
RESTARTING = "🔄 The bot is restarting and skipped this message: please send it again in a minute."


def asker_of(message: TgMessage) -> int:
    """Who asks: the user, or the chat a message was sent on behalf of (anonymous
    group admins and channels all share one service account as ``from_user``)."""
    if message.sender_chat is not None:
        return message.sender_chat.id
    return message.from_user.id if message.from_user is not None else message.chat.id


def build_prompt(system: str, history: Sequence[Message], max_chars: int) -> list[Message]:
    """System message + as much history as fits ``max_chars`` (as formatted for the
    provider), dropping the oldest turns first. The last message is always kept."""
    head: list[Message] = [Message(role="system", content=system)] if system else []
    turns = [Message(role=m["role"], content=m["content"]) for m in history]
    while len(turns) > 1 and len(format_prompt([*head, *turns])) > max_chars:
        turns.pop(0)
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns.pop(0)  # a turn starts with the user
    return [*head, *turns]


@dataclass
class _Generation:
    reply: StreamingReply
    asker: int
    discard: bool = False  # the conversation was reset: do not record the answer


class StopOutcome(enum.Enum):
    STOPPED = "stopped"
    NOT_YOURS = "not yours"  # neither the asker nor an admin pressed it
    ENDED = "ended"  # already over, or a button we never made


class _State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass
class _Prompt:
    """An asker's last prompt in a conversation, which an edit may replace."""

    message_id: int
    turn: Message
    state: _State = _State.WAITING
    generation: _Generation | None = None
    superseded: bool = False  # edited while running: its answer is not wanted any more


# Makes the Stop button's keyboard for an answer's secret token.
StopButton = Callable[[str], InlineKeyboardMarkup]
MAX_REMEMBERED_PROMPTS = 10_000


@dataclass
class Answerer:
    llm: LLM
    history: HistoryStore
    scheduler: Scheduler
    system_prompt: str = ""
    prompt_max_chars: int = 12000
    max_waiting: int = 3  # in a private chat (one answer runs)
    group_max_concurrent: int = 5
    group_max_waiting: int = 10
    typing_interval: float = 4.0
    stats: Stats = field(default_factory=MemoryStats)
    user_limits: UserLimits | None = None  # USER_RATE_LIMIT; None = off
    admin_ids: frozenset[int] = frozenset()  # ADMIN_IDS: no USER_RATE_LIMIT, may stop any answer
    unwritable: Unwritable = field(default_factory=Unwritable)
    stop_button: StopButton | None = None  # None: answers stream without a Stop button
    stream_mode: str = "edit"  # STREAM_MODE: "draft" streams private chats as drafts
    draft_interval: float = 1.0  # DRAFT_INTERVAL
    _line: Line[ConversationKey] = field(init=False)
    _gate: KeyedLock[ConversationKey] = field(init=False, default_factory=KeyedLock)
    _running: dict[ConversationKey, list[_Generation]] = field(init=False, default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _closing: bool = field(init=False, default=False)
    # The running answers' Stop buttons: secret token -> answer.
    _stops: dict[str, _Generation] = field(init=False, default_factory=dict)
    _prompts: OrderedDict[tuple[ConversationKey, int], _Prompt] = field(
        init=False, default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        self._line = Line(limits=self._limits)

    def _limits(self, conversation: ConversationKey) -> tuple[int, int]:
        if conversation.chat_id > 0:  # a private chat
            return 1, self.max_waiting
        return self.group_max_concurrent, self.group_max_waiting

    @property
    def active(self) -> int:
        return sum(len(running) for running in self._running.values())

    def active_in(self, conversation: ConversationKey) -> int:
        return len(self._running.get(conversation, ()))

    def waiting_in(self, conversation: ConversationKey) -> int:
        return self._line.waiting(conversation)

    async def prompt(
        self, bot: Bot, message: TgMessage, conversation: ConversationKey, text: str
    ) -> None:
        """Answer ``text`` (the user's turn) in ``conversation``, replying to ``message``."""
        await self._answer(bot, message, conversation, Message(role="user", content=text))

    async def retry(self, bot: Bot, message: TgMessage, conversation: ConversationKey) -> None:
        """Regenerate the answer to the last user message, as a new reply."""
        await self._answer(bot, message, conversation, None)

    def stop(
        self,
        conversation: ConversationKey,
        asker: int | None = None,
        *,
        message_id: int | None = None,
        suffix: str = STOPPED,
    ) -> bool:
        """Stop running answers of the conversation: ``asker``'s, the one showing
        ``message_id``, or (neither given) all. True when there was one."""
        stopped = False
        for generation in self._running.get(conversation, ()):
            if asker is not None and generation.asker != asker:
                continue
            if message_id is not None and message_id not in generation.reply.message_ids:
                continue
            generation.reply.stop(suffix)
            stopped = True
        return stopped

    def stop_by_button(self, token: str, user_id: int) -> StopOutcome:
        """The Stop button with ``token`` was pressed by ``user_id``: the asker and
        admins may stop the answer. The token is ours only while the answer runs."""
        generation = self._stops.get(token)
        if generation is None:
            return StopOutcome.ENDED
        if user_id != generation.asker and user_id not in self.admin_ids:
            return StopOutcome.NOT_YOURS
        return StopOutcome.STOPPED if generation.reply.stop(STOPPED) else StopOutcome.ENDED

    def stop_draft(self, chat_id: int, draft_id: int) -> bool:
        """The user pressed a draft's own stop button (drafts exist in private chats
        only, so whoever pressed it asked)."""
        for conversation, running in self._running.items():
            if conversation.chat_id != chat_id:
                continue
            for generation in running:
                if generation.reply.draft_id == draft_id:
                    return generation.reply.stop(STOPPED)
        return False

    async def regenerate(
        self, bot: Bot, message: TgMessage, conversation: ConversationKey, user_turn: Message
    ) -> bool:
        """``message`` was edited: if it is its asker's last prompt here, answer the
        new text instead (a waiting prompt is updated in place; a running answer is
        stopped first). False when it is an older message."""
        asker = asker_of(message)
        record = self._prompts.get((conversation, asker))
        if record is None or record.message_id != message.message_id:
            return False
        if record.state is _State.WAITING:
            record.turn = user_turn
            return True
        if record.state is _State.RUNNING:
            record.superseded = True
            if record.generation is not None:
                record.generation.discard = True  # the new answer takes its place
                record.generation.reply.stop(STOPPED)
        await self._answer(bot, message, conversation, user_turn, replace=True)
        return True

    def _remember(self, conversation: ConversationKey, asker: int, record: _Prompt) -> None:
        key = (conversation, asker)
        self._prompts[key] = record
        self._prompts.move_to_end(key)
        if len(self._prompts) > MAX_REMEMBERED_PROMPTS:
            self._prompts.popitem(last=False)

    async def reset(self, conversation: ConversationKey) -> None:
        """Forget the conversation and stop its running answers."""
        for generation in self._running.get(conversation, ()):
            generation.discard = True
            generation.reply.stop(RESET)
        await self.history.clear(conversation)

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
                self.stop(conversation, suffix=SHUTDOWN)
            _, pending = await asyncio.wait(pending, timeout=10)
            for task in pending:
                task.cancel()

    async def _answer(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
        *,
        replace: bool = False,
    ) -> None:
        if self.unwritable.covers(conversation):
            log.debug("not answering in %s: the bot may not write there", conversation)
            return
        asker = asker_of(message)
        # The gate keeps a conversation's prompts in arrival order through the
        # rate-limit check, up to taking a place in the line. Notices go out after
        # it: one user's notice must not hold up the others' prompts.
        async with self._gate.hold(conversation):
            decision = await self._rate_limit(message)
            allowed = decision is None or decision.verdict is Verdict.ALLOW
            ticket = self._line.enter(conversation, asker) if allowed else None
        if decision is not None and decision.verdict is Verdict.NOTIFY:
            await message.reply(SLOW_DOWN.format(seconds=max(1, round(decision.retry_in))))
            return
        if not allowed:
            return
        if ticket is None:
            await message.reply(BUSY if message.chat.type == ChatType.PRIVATE else BUSY_GROUP)
            return
        record = None
        if user_turn is not None:
            record = _Prompt(message.message_id, user_turn)
            self._remember(conversation, asker, record)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with ticket:
                if self._closing:
                    await message.reply(RESTARTING)
                    return
                if self.unwritable.covers(conversation):  # learnt while this one waited
                    return
                try:
                    if record is not None:
                        record.state = _State.RUNNING
                        user_turn = record.turn  # as edited while it waited
                    await self._generate(
                        bot, message, conversation, user_turn, asker, record, replace
                    )
                except ChatUnavailableError as exc:
                    # Dropped while this ticket still holds the turn, so that no
                    # queued prompt starts for a chat that cannot be written to.
                    log.warning(
                        "chat %s is unavailable (%s); dropping its queue", conversation, exc
                    )
                    self._line.drop(conversation)
                    if isinstance(exc, NoRightsError):
                        where = conversation if exc.topic else ConversationKey(conversation.chat_id)
                        self.unwritable.add(where)
        except LineDroppedError:
            pass
        finally:
            if record is not None:
                record.state = _State.DONE
            self._tasks.discard(task)

    async def _rate_limit(self, message: TgMessage) -> Decision | None:
        """USER_RATE_LIMIT's decision for this prompt (None: not limited)."""
        user = message.from_user
        if self.user_limits is None or user is None:
            return None
        if user.id in self.admin_ids and message.sender_chat is None:
            return None
        return await self.user_limits.hit(asker_of(message))

    async def _generate(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
        asker: int,
        record: _Prompt | None = None,
        replace: bool = False,
    ) -> None:
        if user_turn is None:  # /retry: the asker's own last question
            await self.history.pop_answer(conversation, asker)
            turns = await self.history.load(conversation)
            question = next(
                (
                    i
                    for i in range(len(turns) - 1, -1, -1)
                    if turns[i]["role"] == "user" and turns[i].get("asker", asker) == asker
                ),
                None,
            )
            if question is None:
                await message.reply(NOTHING_TO_RETRY)
                return
            turns = turns[: question + 1]  # the conversation as it stood then
        else:
            turn = Turn(role=user_turn["role"], content=user_turn["content"], asker=asker)
            # Held so that answers starting together in a group see each other's
            # questions in arrival order.
            async with self._gate.hold(conversation):
                if replace:  # an edited prompt: its new text takes the old one's place
                    turns = await self.history.replace_question(conversation, turn)
                else:
                    turns = [*await self.history.load(conversation), turn]
                    await self.history.append(conversation, turn)
        if record is not None and record.superseded:
            return  # edited before it started: the edit's answer replaces this turn
        prompt = build_prompt(self.system_prompt, turns, self.prompt_max_chars)

        token = secrets.token_urlsafe(16)  # the Stop button's callback data: unguessable
        reply = StreamingReply(
            bot,
            self.scheduler,
            message.chat.id,
            reply_to=message.message_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            empty_notice=EMPTY,
            typing_interval=self.typing_interval,
            stop_markup=self.stop_button(token) if self.stop_button is not None else None,
            draft=self.stream_mode == "draft" and message.chat.type == ChatType.PRIVATE,
            draft_interval=self.draft_interval,
        )
        generation = _Generation(reply, asker)
        self._stops[token] = generation
        if record is not None:
            record.generation = generation
        self._running.setdefault(conversation, []).append(generation)
        await self.stats.incr("requests")
        await self.stats.set_active(self.active)
        started = time.monotonic()
        try:
            delivered = await reply.run(self._deltas(prompt))
        finally:
            del self._stops[token]
            running = self._running[conversation]
            running.remove(generation)
            if not running:
                del self._running[conversation]
            await self.stats.set_active(self.active)
        log.info(
            "answered in chat %s: %d chars, %d message(s), %.1f s",
            message.chat.id,
            len(delivered.markdown),
            len(delivered.message_ids),
            time.monotonic() - started,
        )
        # Only what somebody saw is remembered.
        seen = bool(delivered.markdown.strip() and delivered.message_ids) and not generation.discard
        try:
            if delivered.chat_id != conversation.chat_id:
                # The group became a supergroup meanwhile: the conversation goes on there.
                await self.history.move(conversation, ConversationKey(delivered.chat_id))
                conversation = ConversationKey(delivered.chat_id)
            if seen:
                await self.history.append(
                    conversation, Turn(role="assistant", content=delivered.markdown, asker=asker)
                )
        except RedisError as exc:  # the user has the answer; only the memory of it is lost
            log.warning("answer in chat %s not stored: Redis failed (%s)", message.chat.id, exc)

    async def _deltas(self, prompt: list[Message]) -> AsyncIterator[str]:
        stream = self.llm.stream(prompt)
        try:
            async for delta in stream:
                yield delta
        except ProviderError as exc:
            log.warning("%s failed: %s", exc.provider, exc)
            await self.stats.incr("failures")
            yield notice_for(exc)
        except Exception:
            # A bug in a provider, not an upstream failure: the answer still ends with
            # a readable notice, and the traceback (no prompt in it) goes to the log.
            log.error("the LLM provider failed unexpectedly", exc_info=True)
            await self.stats.incr("failures")
            yield PROVIDER_FAILED
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # release the HTTP response now, also when stopped
                await aclose()
