"""Answering prompts: history in, streamed reply out, in each conversation's order.

:class:`Answerer` ties the pieces together for a handler: it takes a place in the
conversation's line (one answer at a time in a private chat, several askers at once
in a group; bot/conversation/), loads the history,
builds the prompt within ``prompt_max_chars``, streams the provider's answer
through a :class:`~bot.delivery.streaming.StreamingReply`, and records the answer —
including its marker when it was stopped or interrupted, so the model later sees
what the user saw.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from aiogram.types import InlineKeyboardMarkup
from aiogram.types import Message as TgMessage
from redis.exceptions import RedisError

from gptalk import Message, format_prompt

from .conversation.arrivals import Arrivals
from .conversation.control import Command, Control, LocalControl
from .conversation.gate import KeyedLock
from .conversation.handback import HandBacks
from .conversation.line import HandedOverError, Line, LineDroppedError, Lines
from .delivery.budgets import Priority
from .delivery.journal import Entry, InFlight, Journal, MemoryJournal
from .delivery.refusals import TRANSIENT, brief
from .delivery.scheduler import Scheduler
from .delivery.streaming import ChatUnavailableError, NoRightsError, StreamingReply
from .i18n import CATALOGS, Texts
from .observability import AnswerMetrics, Metrics
from .providers import LLM, ProviderError, notice_for
from .storage.history import HistoryStore, Turn, question_index
from .storage.keys import ConversationKey
from .storage.last_prompts import LastPrompts, MemoryLastPrompts
from .storage.stats import MemoryStats, Stats
from .storage.user_limits import Decision, UserLimits, Verdict
from .unwritable import Unwritable

__all__ = [
    "LLM",
    "Answerer",
    "Marker",
    "StopOutcome",
    "asker_of",
    "build_prompt",
    "conversation_limits",
    "notice_for",
]

log = logging.getLogger(__name__)

# The marker ending a stopped answer, in the language of the one who asked for it.
Marker = Callable[[Texts], str]


def _stopped(texts: Texts) -> str:
    return texts.stopped


def _shutdown(texts: Texts) -> str:
    return texts.shutdown


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


def conversation_limits(
    max_waiting: int = 3, group_max_concurrent: int = 5, group_max_waiting: int = 10
) -> Callable[[ConversationKey], tuple[int, int]]:
    """A conversation's line: ``(max_running, max_waiting)``."""

    def limits(conversation: ConversationKey) -> tuple[int, int]:
        if conversation.chat_id > 0:  # a private chat
            return 1, max_waiting
        return group_max_concurrent, group_max_waiting

    return limits


# What an "edited" command's handler returns when a waiting prompt took the new text:
# more than any number of replicas could return otherwise (1 each).
_EDITED_IN_PLACE: Final = 1_000_000


def _where(conversation: ConversationKey) -> Command:
    return {"chat_id": conversation.chat_id, "thread_id": conversation.thread_id}


def _conversation_of(command: Command) -> ConversationKey:
    return ConversationKey(int(command["chat_id"]), command.get("thread_id"))


@dataclass
class _Generation:
    reply: StreamingReply
    asker: int
    texts: Texts  # the asker's language
    discard: bool = False  # the conversation was reset: do not record the answer


class StopOutcome(enum.Enum):
    STOPPED = "stopped"
    NOT_YOURS = "not yours"  # neither the asker nor an admin pressed it
    ENDED = "ended"  # already over, or a button we never made


# A Stop button's outcome as a count over the control channel (the replica that
# runs the answer answers; the others count 0).
_CODE_OF_OUTCOME = {StopOutcome.ENDED: 0, StopOutcome.NOT_YOURS: 1, StopOutcome.STOPPED: 2}
_OUTCOME_OF_CODE = {code: outcome for outcome, code in _CODE_OF_OUTCOME.items()}


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


@dataclass(eq=False)
class _Queued:
    """A prompt with its place in the line, until its answer starts; what a stopping
    replica hands to another (as JSON)."""

    ticket: AbstractAsyncContextManager[object]
    message: TgMessage
    conversation: ConversationKey
    texts: Texts
    record: _Prompt | None  # None: /retry (the asker's last question again)
    replace: bool  # an edited prompt: its new text takes the old one's place

    def payload(self, ticket_id: str) -> str:
        return json.dumps(
            {
                "ticket": ticket_id,
                "chat_id": self.conversation.chat_id,
                "thread_id": self.conversation.thread_id,
                "message": self.message.model_dump(mode="json", by_alias=True, exclude_none=True),
                "turn": self.record.turn["content"] if self.record is not None else None,
                "language": self.texts.language,
                "replace": self.replace,
            },
            ensure_ascii=False,
        )

    @classmethod
    async def resume(
        cls, payload: str, bot: Bot, handbacks: HandBacks, line: Lines[ConversationKey]
    ) -> _Queued | None:
        """The prompt of ``payload``, in the place it had (or, when that lapsed, a new
        one by its message id); None when the line is full: its sender is told."""
        data = json.loads(payload)
        message = TgMessage.model_validate(data["message"], context={"bot": bot})
        conversation = ConversationKey(data["chat_id"], data["thread_id"])
        texts = CATALOGS[data["language"]]
        ticket: AbstractAsyncContextManager[object] | None
        ticket = await handbacks.adopt(conversation, data["ticket"])
        if ticket is None:
            ticket = await line.enter(conversation, asker_of(message), order=message.message_id)
        if ticket is None:
            private = message.chat.type == ChatType.PRIVATE
            await _tell(message, texts.busy if private else texts.busy_group)
            return None
        turn = data["turn"]
        record = (
            None
            if turn is None
            else _Prompt(message.message_id, Message(role="user", content=turn))
        )
        return cls(ticket, message, conversation, texts, record, bool(data["replace"]))


# Seconds a cancelled answer gets at shutdown to give up its place in line (Redis
# calls, each bounded by the client's socket timeout).
_CANCELLED_GRACE: Final = 5.0

_TELL_TRIES: Final = 4


async def _tell(message: TgMessage, text: str) -> None:
    """Reply ``text``, the only word a handed-back prompt's sender gets when it cannot
    be answered: so not as chatter, which is dropped when the chat's budget is short,
    and again (after 1, 2, 4 s) when Telegram fails."""
    with Scheduler.calls_as(Priority.ANSWER):
        for attempt in range(_TELL_TRIES):
            try:
                await message.reply(text)
                return
            except TRANSIENT as exc:
                if attempt == _TELL_TRIES - 1:
                    raise
                log.warning(
                    "notice to chat %s not sent (%s); trying again", message.chat.id, brief(exc)
                )
            await asyncio.sleep(2**attempt)


# Makes the Stop button's keyboard for an answer's secret token and a label.
StopButton = Callable[[str, str], InlineKeyboardMarkup]
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
    journal: Journal = field(default_factory=MemoryJournal)  # answers in flight
    # Whose edit is answered anew: shared by replicas (this process's records of
    # waiting and running prompts are not: they hold the live answer).
    last_prompts: LastPrompts = field(default_factory=MemoryLastPrompts)
    metrics: Metrics = field(default_factory=Metrics)
    # Who answers when; None: this process's own Line. With replicas, a RedisLine
    # (built with the same conversation_limits) and a RedisControl.
    line: Lines[ConversationKey] | None = None
    control: Control = field(default_factory=LocalControl)
    _line: Lines[ConversationKey] = field(init=False)
    stop_button: StopButton | None = None  # None: answers stream without a Stop button
    stream_mode: str = "edit"  # STREAM_MODE: "draft" streams private chats as drafts
    draft_interval: float = 1.0  # DRAFT_INTERVAL
    # A conversation's messages in arrival order, up to their place in the line (the
    # dispatcher's conversation middleware registers them). With replicas, an
    # Arrivals sharing them through the RedisLine.
    arrivals: Arrivals[ConversationKey] = field(default_factory=Arrivals)
    _gate: KeyedLock[ConversationKey] = field(init=False, default_factory=KeyedLock)
    _running: dict[ConversationKey, list[_Generation]] = field(init=False, default_factory=dict)
    _active: int = field(init=False, default=0)  # answers in _running: summing is O(N)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _closing: bool = field(init=False, default=False)
    _stopping: bool = field(init=False, default=False)  # the shutdown stops every answer
    # Stopping replicas hand their waiting prompts to the others (None: one process).
    handbacks: HandBacks | None = None
    _queued: set[_Queued] = field(init=False, default_factory=set)  # in line, not started
    # The running answers' Stop buttons: secret token -> answer.
    _stops: dict[str, _Generation] = field(init=False, default_factory=dict)
    _prompts: OrderedDict[tuple[ConversationKey, int], _Prompt] = field(
        init=False, default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        limits = conversation_limits(
            self.max_waiting, self.group_max_concurrent, self.group_max_waiting
        )
        self._line = self.line if self.line is not None else Line(limits=limits)
        self.control.on("stop", self._apply_stop)
        self.control.on("discard", self._apply_discard)
        self.control.on("reset", self._apply_reset)
        self.control.on("stop_answer", self._apply_stop_answer)
        self.control.on("edited", self._apply_edited)
        self.control.on("stop_draft", self._apply_stop_draft)

    @property
    def active(self) -> int:
        return self._active

    async def waiting_in(self, conversation: ConversationKey) -> int:
        """Prompts waiting in the conversation, in every replica."""
        return (await self._line.counts(conversation))[1]

    async def prompt(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        text: str,
        *,
        texts: Texts,
        parts: int = 1,
    ) -> None:
        """Answer ``text`` (the user's turn) in ``conversation``, replying to ``message``;
        notices and markers in the asker's language (``texts``). ``parts``: the
        messages ``text`` was made of (a split paste), each counting for
        ``USER_RATE_LIMIT``."""
        user_turn = Message(role="user", content=text)
        await self._answer(bot, message, conversation, user_turn, texts, parts=parts)

    async def retry(
        self, bot: Bot, message: TgMessage, conversation: ConversationKey, *, texts: Texts
    ) -> None:
        """Regenerate the answer to the last user message, as a new reply."""
        await self._answer(bot, message, conversation, None, texts)

    def stop(
        self,
        conversation: ConversationKey,
        asker: int | None = None,
        *,
        message_id: int | None = None,
        suffix: Marker = _stopped,
    ) -> bool:
        """Stop running answers of the conversation: ``asker``'s, the one showing
        ``message_id``, or (neither given) all. True when there was one."""
        stopped = False
        for generation in self._running.get(conversation, ()):
            if asker is not None and generation.asker != asker:
                continue
            if message_id is not None and message_id not in generation.reply.message_ids:
                continue
            generation.reply.stop(suffix(generation.texts))
            stopped = True
        return stopped

    async def stop_anywhere(
        self,
        conversation: ConversationKey,
        asker: int | None = None,
        *,
        message_id: int | None = None,
    ) -> bool:
        """:meth:`stop` in whichever replica runs the answer."""
        stopped = await self.control.send(
            "stop", **_where(conversation), asker=asker, message_id=message_id
        )
        return stopped > 0

    async def running_in(self, conversation: ConversationKey) -> int:
        """Answers running in the conversation, in every replica."""
        return (await self._line.counts(conversation))[0]

    async def _apply_stop(self, command: Command) -> int:
        return int(
            self.stop(
                _conversation_of(command),
                command.get("asker"),
                message_id=command.get("message_id"),
            )
        )

    async def stop_by_button(self, token: str, user_id: int) -> StopOutcome:
        """The Stop button with ``token`` was pressed by ``user_id``: the asker and
        admins may stop the answer. The token maps to an answer only while it runs,
        in whichever replica runs it."""
        if isinstance(self.control, LocalControl):
            return self._stop_token(token, user_id)
        # Every replica looks; only the one that runs the answer counts more than 0.
        code = await self.control.send("stop_answer", token=token, user_id=user_id)
        return _OUTCOME_OF_CODE.get(code, StopOutcome.ENDED)

    def _stop_token(self, token: str, user_id: int) -> StopOutcome:
        generation = self._stops.get(token)
        if generation is None:
            return StopOutcome.ENDED
        if user_id != generation.asker and user_id not in self.admin_ids:
            return StopOutcome.NOT_YOURS
        stopped = generation.reply.stop(_stopped(generation.texts))
        return StopOutcome.STOPPED if stopped else StopOutcome.ENDED

    async def _apply_stop_answer(self, command: Command) -> int:
        outcome = self._stop_token(str(command.get("token")), int(command.get("user_id", 0)))
        return _CODE_OF_OUTCOME[outcome]

    async def stop_draft(self, chat_id: int, draft_id: int) -> bool:
        """The user pressed a draft's own stop button (drafts exist in private chats
        only, so whoever pressed it asked): the answer streaming that draft stops, in
        whichever replica runs it. True when there was one."""
        stopped = await self.control.send("stop_draft", chat_id=chat_id, draft_id=draft_id)
        return stopped > 0

    async def _apply_stop_draft(self, command: Command) -> int:
        return int(self._stop_draft(int(command["chat_id"]), int(command["draft_id"])))

    def _stop_draft(self, chat_id: int, draft_id: int) -> bool:
        for conversation, running in self._running.items():
            if conversation.chat_id != chat_id:
                continue
            for generation in running:
                if generation.reply.draft_id == draft_id:
                    return generation.reply.stop(_stopped(generation.texts))
        return False

    async def regenerate(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message,
        *,
        texts: Texts,
    ) -> bool:
        """``message`` was edited: if it is its asker's last prompt here, answer the
        new text instead (a waiting prompt is updated in place; a running answer is
        stopped first). False when it is an older message."""
        asker = asker_of(message)
        # Asked of the shared record, never of a replica's own: that one is stale
        # once the asker's next prompt went to another replica, or lost in a restart.
        if await self.last_prompts.last(conversation, asker) != message.message_id:
            return False
        # A waiting or running prompt is in the replica that took it, which need not
        # be this one: every replica looks (this one too, through the control channel).
        found = await self.control.send(
            "edited",
            **_where(conversation),
            asker=asker,
            message_id=message.message_id,
            turn=dict(user_turn),
        )
        # Running, ended, or held by no replica any more (a restart): answered anew here.
        if found < _EDITED_IN_PLACE:
            await self._answer(bot, message, conversation, user_turn, texts, replace=True)
        return True

    async def _apply_edited(self, command: Command) -> int:
        key = (_conversation_of(command), int(command["asker"]))
        record = self._prompts.get(key)
        if record is None or record.message_id != int(command["message_id"]):
            return 0
        turn = command["turn"]
        if record.state is _State.WAITING:
            record.turn = {"role": turn["role"], "content": turn["content"]}
            return _EDITED_IN_PLACE
        # The replica that got the edit answers it and remembers it from now on.
        del self._prompts[key]
        if record.state is _State.RUNNING:
            record.superseded = True
            if record.generation is not None:
                record.generation.discard = True  # the new answer takes its place
                record.generation.reply.stop(_stopped(record.generation.texts))
        return 1

    def _remember(self, conversation: ConversationKey, asker: int, record: _Prompt) -> None:
        key = (conversation, asker)
        self._prompts[key] = record
        self._prompts.move_to_end(key)
        if len(self._prompts) > MAX_REMEMBERED_PROMPTS:
            self._prompts.popitem(last=False)

    async def reset(self, conversation: ConversationKey) -> None:
        """Forget the conversation and stop its running answers (in every replica).

        The running answers are told first not to record themselves, then the
        history is cleared, and only then are they stopped: stopping one lets the
        prompt waiting behind it start, and that prompt must find the conversation
        new, or its question would be cleared and its answer dropped."""
        await self.control.send("discard", **_where(conversation))
        await self.history.clear(conversation)
        await self.control.send("reset", **_where(conversation))
        await self.journal.forget(conversation)

    async def _apply_discard(self, command: Command) -> int:
        running = self._running.get(_conversation_of(command), [])
        for generation in running:
            generation.discard = True
        return len(running)

    async def _apply_reset(self, command: Command) -> int:
        running = self._running.get(_conversation_of(command), [])
        for generation in running:
            generation.discard = True
            generation.reply.stop(generation.texts.reset)
        return len(running)

    async def drain(self, grace: float) -> None:
        """On shutdown: prompts still waiting in line go to the other replicas (or,
        without them, are not started); running answers get ``grace`` seconds to
        finish, then are stopped (their text so far is delivered, marked)."""
        self._closing = True
        if self.handbacks is not None:
            await self.handbacks.stop()  # and take none of the others' any more
            handed = 0
            for queued in list(self._queued):
                handed += await self._hand_back(queued, if_waiting=True)
            if handed:
                log.info("handed back %d waiting prompt(s), for another replica", handed)
        if not self._tasks:
            return
        log.info("waiting up to %s s for %d prompt(s) in hand", grace, len(self._tasks))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Again until none is left: a prompt that was on its way into the line when
        # the signal came is handled too (handed back, or its sender told).
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        if self._tasks:
            # An answer past the _closing check but not running yet (its question and
            # journal entry on their way to Redis) stops as it starts.
            self._stopping = True
            for conversation in list(self._running):
                self.stop(conversation, suffix=_shutdown)
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
            if pending:  # their clean-up (places in line, counts) before the app closes
                await asyncio.wait(pending, timeout=_CANCELLED_GRACE)

    async def _answer(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
        texts: Texts,
        *,
        replace: bool = False,
        parts: int = 1,
    ) -> None:
        # In hand from the start, not only once in line: a shutdown waits for it.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer_in_turn(
                bot, message, conversation, user_turn, texts, replace=replace, parts=parts
            )
        finally:
            self._tasks.discard(task)

    async def _answer_in_turn(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
        texts: Texts,
        *,
        replace: bool,
        parts: int,
    ) -> None:
        if self.unwritable.covers(conversation):
            log.debug("not answering in %s: the bot may not write there", conversation)
            return
        asker = asker_of(message)
        self.metrics.prompts.inc()
        # The gate keeps a conversation's prompts in arrival order through the
        # rate-limit check, up to taking a place in the line. Notices go out after
        # it: one user's notice must not hold up the others' prompts.
        await self.arrivals.turn(conversation, message.message_id)
        async with self._gate.hold(conversation):
            decision = await self._rate_limit(message, parts)
            allowed = decision is None or decision.verdict is Verdict.ALLOW
            ticket = (
                await self._line.enter(conversation, asker, order=message.message_id)
                if allowed
                else None
            )
        if allowed:  # in line (or refused a place): later ones may go
            self.arrivals.entered(conversation, message.message_id)
        else:
            await self.arrivals.leave(conversation, message.message_id)
        if decision is not None and decision.verdict is Verdict.NOTIFY:
            seconds = max(1, round(decision.retry_in))
            await message.reply(texts.slow_down.format(seconds=seconds))
            return
        if not allowed:
            return
        if ticket is None:
            private = message.chat.type == ChatType.PRIVATE
            await message.reply(texts.busy if private else texts.busy_group)
            return
        record = None
        if user_turn is not None:
            record = _Prompt(message.message_id, user_turn)
            # Remembered here before it is noted as the last prompt: an edit that
            # finds the note finds this record too, and takes no second place in line.
            self._remember(conversation, asker, record)
            try:
                await self.last_prompts.note(conversation, asker, message.message_id)
            except RedisError as exc:  # only an edit of it is lost: it is still answered
                log.warning("prompt in chat %s not noted: Redis failed (%s)", message.chat.id, exc)
        await self._in_line(bot, _Queued(ticket, message, conversation, texts, record, replace))

    async def _in_line(self, bot: Bot, queued: _Queued) -> None:
        """Wait for the prompt's turn and answer it; while this replica stops, hand
        it to the others instead (or, without them, tell its sender)."""
        message, conversation, record = queued.message, queued.conversation, queued.record
        self._queued.add(queued)
        try:
            if self._closing:  # it reached its place while this replica stops
                await self._hand_back(queued, if_waiting=True)
            async with queued.ticket:
                self._queued.discard(queued)
                if self._closing:
                    if not await self._hand_back(queued, if_waiting=False):
                        await message.reply(queued.texts.restarting)
                    return
                if self.unwritable.covers(conversation):  # learnt while this one waited
                    return
                try:
                    user_turn = None  # /retry: the asker's last question
                    if record is not None:
                        record.state = _State.RUNNING
                        user_turn = record.turn  # as edited while it waited
                    await self._generate(
                        bot,
                        message,
                        conversation,
                        user_turn,
                        asker_of(message),
                        queued.texts,
                        record,
                        queued.replace,
                    )
                except ChatUnavailableError as exc:
                    # Dropped while this ticket still holds the turn, so that no
                    # queued prompt starts for a chat that cannot be written to.
                    log.warning(
                        "chat %s is unavailable (%s); dropping its queue", conversation, exc
                    )
                    await self._line.drop(conversation)
                    if isinstance(exc, NoRightsError):
                        where = conversation if exc.topic else ConversationKey(conversation.chat_id)
                        self.unwritable.add(where)
        except (LineDroppedError, HandedOverError):
            pass
        finally:
            self._queued.discard(queued)
            if record is not None:
                record.state = _State.DONE

    async def _hand_back(self, queued: _Queued, *, if_waiting: bool) -> bool:
        """To another replica, with its place in the line; False when it stays."""
        if self.handbacks is None:
            return False
        handed = await self.handbacks.hand_back(
            queued.ticket, queued.payload, if_waiting=if_waiting
        )
        if handed:
            log.info("a prompt in chat %s goes to another replica", queued.conversation.chat_id)
        return handed

    async def start(self, bot: Bot) -> None:
        """Take the prompts that stopping replicas hand back (a dispatcher startup hook)."""
        if self.handbacks is not None:
            self.handbacks.start(lambda payload: self._take_over(bot, payload))

    def _take_over(self, bot: Bot, payload: str) -> None:
        task = asyncio.create_task(self._resume(bot, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self, bot: Bot, payload: str) -> None:
        """Answer a prompt another replica handed back, in its place in the line."""
        assert self.handbacks is not None
        try:
            if self._closing:  # popped just as this one began to stop: the next one takes it
                await self.handbacks.push(payload)
                return
            queued = await _Queued.resume(payload, bot, self.handbacks, self._line)
        except RedisError as exc:
            log.warning("a handed-back prompt is lost: Redis failed (%s)", exc)
            return
        except (TelegramAPIError, ClientDecodeError) as exc:
            log.warning(
                "a handed-back prompt found its line full; its sender not told: %s", brief(exc)
            )
            return
        if queued is None:
            return
        if queued.record is not None:
            self._remember(queued.conversation, asker_of(queued.message), queued.record)
        log.info("answering a prompt in chat %s for a replica that stopped", queued.message.chat.id)
        await self._in_line(bot, queued)

    async def _rate_limit(self, message: TgMessage, parts: int) -> Decision | None:
        """USER_RATE_LIMIT's decision for this prompt of ``parts`` messages (None: not
        limited). Messages sent on behalf of a chat count for that chat, and are never
        admin-exempt."""
        if self.user_limits is None:
            return None
        user = message.from_user
        if message.sender_chat is None and (user is None or user.id in self.admin_ids):
            return None
        return await self.user_limits.hit(asker_of(message), parts)

    async def _generate(
        self,
        bot: Bot,
        message: TgMessage,
        conversation: ConversationKey,
        user_turn: Message | None,
        asker: int,
        texts: Texts,
        record: _Prompt | None = None,
        replace: bool = False,
    ) -> None:
        if user_turn is None:  # /retry: the asker's own last question
            await self.history.pop_answer(conversation, asker)
            turns = await self.history.load(conversation)
            question = question_index(turns, asker)
            if question is None:
                await message.reply(texts.nothing_to_retry)
                return
            turns = turns[: question + 1]  # the conversation as it stood then
            if not turns[-1]["content"].strip():
                await self._refuse_empty(message, texts)
                return
        else:
            if not user_turn["content"].strip():
                await self._refuse_empty(message, texts)
                return
            turn = Turn(role=user_turn["role"], content=user_turn["content"], asker=asker)
            # Held so that answers starting together in a group see each other's
            # questions in arrival order.
            async with self._gate.hold(conversation):
                if replace:  # an edited prompt: its new text takes the old one's place
                    turns = await self.history.replace_question(conversation, turn)
                else:
                    turns = [*await self.history.load(conversation), turn]
                    await self.history.append(conversation, turn)
        prompt = build_prompt(self.system_prompt, turns, self.prompt_max_chars)

        language = message.from_user.language_code if message.from_user else None
        entry = Entry.new(
            conversation,
            reply_to=message.message_id,
            question=turns[-1]["content"],
            language=language,
            asker=asker,
        )
        flight = InFlight(self.journal, entry)
        await flight.begin()
        # From this check to the registration below, no await: an edit landing in
        # between would find the answer neither superseded nor running, and two full
        # answers would be generated.
        if record is not None and record.superseded:
            await flight.end()
            return  # edited before it started: the edit's answer replaces this turn
        token = secrets.token_urlsafe(16)  # the Stop button's callback data: unguessable
        reply = StreamingReply(
            bot,
            self.scheduler,
            message.chat.id,
            reply_to=message.message_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            empty_notice=texts.empty_answer,
            typing_interval=self.typing_interval,
            on_progress=flight.progress,
            stop_markup=(
                self.stop_button(token, texts.stop_button) if self.stop_button is not None else None
            ),
            draft=self.stream_mode == "draft" and message.chat.type == ChatType.PRIVATE,
            draft_interval=self.draft_interval,
        )
        generation = _Generation(reply, asker, texts)
        self._stops[token] = generation
        if record is not None:
            record.generation = generation
        self._running.setdefault(conversation, []).append(generation)
        self._active += 1
        if self._stopping:
            reply.stop(_shutdown(texts))
        await self.stats.incr("requests")
        await self.stats.set_active(self.active)
        started = time.monotonic()
        observed = self.metrics.answer()
        try:
            delivered = await reply.run(self._deltas(prompt, texts, observed))
        except ChatUnavailableError:
            observed.failed("chat_unavailable")
            raise
        finally:
            observed.finish(reply.edits)
            del self._stops[token]
            running = self._running[conversation]
            running.remove(generation)
            self._active -= 1
            if not running:
                del self._running[conversation]
            await self.stats.set_active(self.active)
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
            extra={"duration_s": round(time.monotonic() - started, 3)},
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

    async def _refuse_empty(self, message: TgMessage, texts: Texts) -> None:
        # Handlers refuse empty prompts; reaching here is a bug upstream of this
        # (a paste that lost its pieces once sent '' to the model and stored it).
        log.warning("not answering an empty prompt in chat %s", message.chat.id)
        await message.reply(texts.empty_prompt)

    async def _deltas(
        self, prompt: list[Message], texts: Texts, observed: AnswerMetrics
    ) -> AsyncIterator[str]:
        stream = self.llm.stream(prompt)
        try:
            async for delta in stream:
                observed.text()
                yield delta
        except ProviderError as exc:
            observed.failed(type(exc).__name__.removeprefix("Provider").lower())
            log.warning("%s failed: %s", exc.provider, exc)
            await self.stats.incr("failures")
            yield notice_for(exc, texts)
        except Exception:
            # A bug in a provider, not an upstream failure: the answer still ends with
            # a readable notice, and the traceback (no prompt in it) goes to the log.
            log.error("the LLM provider failed unexpectedly", exc_info=True)
            await self.stats.incr("failures")
            yield texts.provider_failed
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # release the HTTP response now, also when stopped
                await aclose()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
