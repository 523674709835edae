"""Prompts a stopping replica hands to the others, with their places in the shared line
(bot/conversation/handback.py, RedisTicket.hand_over, RedisLine.adopt), on the test's
private redis-server; two RedisLine objects stand for two replicas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.answering import conversation_limits
from bot.conversation.handback import HandBacks
from bot.conversation.line import HandedOverError
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine, RedisTicket
from bot.delivery.render import render
from bot.i18n import EN
from bot.storage.keys import ConversationKey, Keys
from tests.conftest import BotFactory, FarRedis
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import BAD_GATEWAY_HTML, FakeTelegram

LEASE = 1.0
KEY = ConversationKey(1)  # a private chat: one answer at a time
KEYS = Keys("hb")


@pytest.fixture
async def subscriber(redis: aioredis.Redis) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(redis)
    yield subscriber
    await subscriber.aclose()


@pytest.fixture
async def lines(redis: aioredis.Redis, subscriber: Subscriber) -> list[RedisLine[ConversationKey]]:
    made = [RedisLine(redis, KEYS, subscriber, lease=LEASE) for _ in ("a", "b")]
    await subscriber.start()  # with the lines' channel to listen to
    return made


async def enter(line: RedisLine[ConversationKey], order: int) -> RedisTicket[ConversationKey]:
    ticket = await line.enter(KEY, "ann", order=order)
    assert ticket is not None
    return ticket


async def hand_over(
    ticket: RedisTicket[ConversationKey], *, if_waiting: bool = False
) -> str | None:
    """Hand ``ticket`` to the others as a stopping replica does: the id it sent, or
    None when it kept the place (and sent nothing)."""
    sent: list[str] = []

    async def send() -> None:
        sent.append(ticket.id)

    handed = await ticket.hand_over(send, if_waiting=if_waiting)
    assert sent == ([ticket.id] if handed else [])
    return sent[0] if handed else None


class Holder:
    """Waits for the ticket's turn, notes it, and holds it until ``release``."""

    def __init__(self, name: str, ticket: AbstractAsyncContextManager[object], log: list[str]):
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(name, ticket, log))

    async def _hold(self, name: str, ticket: AbstractAsyncContextManager[object], log: list[str]):
        try:
            async with ticket:
                log.append(name)
                await self.release.wait()
        except HandedOverError:
            log.append(f"{name} handed over")


async def settle() -> None:
    await asyncio.sleep(0.2)  # a few round trips: for "nothing else happened"


async def test_a_handed_over_place_keeps_its_rank_on_the_adopting_replica(
    lines: list[RedisLine[ConversationKey]],
) -> None:
    a, b = lines
    log: list[str] = []
    first = Holder("1", await enter(a, 1), log)
    second_ticket = await enter(a, 2)
    second = Holder("2", second_ticket, log)
    third = Holder("3", await enter(b, 3), log)
    await settle()
    sent = await hand_over(second_ticket, if_waiting=True)
    assert sent == second_ticket.id
    await asyncio.wait_for(second.task, 5)
    await asyncio.sleep(LEASE / 2)  # nobody looks after it meanwhile, for less than a lease
    adopted = await b.adopt(KEY, sent)
    assert adopted is not None
    again = Holder("2 on b", adopted, log)
    first.release.set()
    await settle()
    assert log == ["1", "2 handed over", "2 on b"]  # before message 3, as its id says
    again.release.set()
    await settle()
    third.release.set()
    await asyncio.wait_for(asyncio.gather(first.task, again.task, third.task), 5)
    assert log == ["1", "2 handed over", "2 on b", "3"]


async def test_a_place_whose_turn_came_stays_unless_running_ones_are_wanted(
    lines: list[RedisLine[ConversationKey]], redis: aioredis.Redis
) -> None:
    a, b = lines
    ticket = await enter(a, 1)
    assert await hand_over(ticket, if_waiting=True) is None  # it runs: kept, still renewed
    await asyncio.sleep(LEASE * 1.5)
    assert await a.counts(KEY) == (1, 0)
    sent = await hand_over(ticket)  # a running one too, when asked
    assert sent is not None
    adopted = await b.adopt(KEY, sent)
    assert adopted is not None
    await asyncio.sleep(LEASE * 1.5)  # the adopter renews its lease now
    assert await b.counts(KEY) == (1, 0)
    async with ticket:
        pass  # the old holder's exit gives nothing up: the place is b's
    assert await b.counts(KEY) == (1, 0)
    async with adopted:
        pass
    assert await redis.keys("hb:line:*") == []


async def test_a_failed_send_keeps_the_place_here_and_a_lapsed_one_is_not_adopted(
    lines: list[RedisLine[ConversationKey]],
) -> None:
    a, b = lines
    log: list[str] = []
    first = Holder("1", await enter(a, 1), log)
    second_ticket = await enter(a, 2)
    second = Holder("2", second_ticket, log)

    async def fail() -> None:
        raise RedisConnectionError("down")

    with pytest.raises(RedisConnectionError):
        await second_ticket.hand_over(fail, if_waiting=True)
    await asyncio.sleep(LEASE * 1.5)  # still looked after: its place did not lapse
    first.release.set()
    await settle()
    assert log == ["1", "2"]
    second.release.set()
    await asyncio.wait_for(asyncio.gather(first.task, second.task), 5)

    third = await enter(a, 3)
    fourth = await enter(a, 4)
    gone = await hand_over(fourth, if_waiting=True)
    assert gone is not None
    await asyncio.sleep(LEASE * 1.5)  # nobody adopted it in time: the place lapsed
    assert await b.adopt(KEY, gone) is None
    async with third:
        assert await a.counts(KEY) == (1, 0)


async def test_handbacks_are_taken_by_the_replicas_that_take_them(
    redis: aioredis.Redis, subscriber: Subscriber, lines: list[RedisLine[ConversationKey]]
) -> None:
    giving = HandBacks(redis, KEYS, subscriber, lines[0], interval=5.0)
    taking = HandBacks(redis, KEYS, subscriber, lines[1], interval=5.0)
    await giving.push("before anyone takes")
    taken: list[str] = []
    got = asyncio.Event()

    def take(payload: str) -> None:
        taken.append(payload)
        got.set()

    assert await subscriber.ready()  # the new channel too
    taking.start(take)
    await asyncio.wait_for(got.wait(), 5)
    got.clear()
    await giving.push("later")
    await asyncio.wait_for(got.wait(), 2)  # at once (pub/sub), not after the 5 s interval
    assert taken == ["before anyone takes", "later"]
    await taking.stop()
    await giving.push("while nobody takes")
    await settle()
    assert taken == ["before anyone takes", "later"]
    assert await redis.lrange("hb:handback", 0, -1) == [b"while nobody takes"]


# --- the answerer: waiting prompts of a stopping bot -------------------------------------------


async def test_a_prompt_waiting_at_shutdown_is_answered_after_the_restart(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "A **slow** answer, " + "word " * 30
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~1 s
    before = await make_bot(journal_lease=1.0)
    ann = before.user()
    first = before.say(ann, "first")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])), 15)
    second = before.say(ann, "second")
    await tg.wait_for(lambda: fake_gptalk.streams == 1 and not tg.pending_updates, 15)
    await tg.wait_for(lambda: before.answerer._queued, 15)  # in line behind the first
    await before.stop()  # the first is finished, the second goes to whoever comes next
    expected = render(fake_gptalk.answer).text
    assert before.answer(first) == expected
    assert before.replies(second) == []
    assert len(await redis.lrange("gptalk:handback", 0, -1)) == 1

    await make_bot(journal_lease=1.0)  # the restarted process
    await tg.wait_for(lambda: before.answer(second) == expected, 15)
    assert fake_gptalk.prompts == [
        "first",
        f"User: first\nAssistant: {fake_gptalk.answer}\nUser: second\nAssistant:",
    ]
    assert await redis.lrange("gptalk:handback", 0, -1) == []


async def test_without_redis_a_prompt_waiting_at_shutdown_is_declined(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "A **slow** answer, " + "word " * 30
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05
    bot = await make_bot(redis_url=None)
    ann = bot.user()
    first = bot.say(ann, "first")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])), 15)
    second = bot.say(ann, "second")
    await tg.wait_for(lambda: bot.answerer._queued, 15)
    await bot.stop()
    assert bot.answer(first) == render(fake_gptalk.answer).text
    [declined] = bot.replies(second)
    assert "restarting" in declined
    assert fake_gptalk.prompts == ["first"]


async def test_an_answer_starting_as_the_shutdown_stops_the_others_is_stopped_too(
    far_redis: FarRedis,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    # Far from Redis, an answer takes two round trips (the question's write, the
    # journal's) from its question being in the history to counting as running: the
    # shutdown's stop falls in between. It would stream on until it was cancelled.
    fake_gptalk.answer = "A **long** answer, " + "word " * 300
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~30 s
    # A long lease: the hand-backs are not looked for (over the far link) meanwhile.
    far = await far_redis(0.2)
    bot = await make_bot(redis_url=far, shutdown_timeout=0, journal_lease=60)
    ann = bot.user()
    question = bot.say(ann, "first")
    async with asyncio.timeout(30):
        while not await redis.exists(f"gptalk:history:{ann['id']}"):  # noqa: ASYNC110 - Redis has no event
            await asyncio.sleep(0.005)
    await bot.answerer.drain(0)  # what SIGTERM runs, with SHUTDOWN_TIMEOUT=0
    assert bot.answer(question) == render(EN.shutdown.strip()).text
    assert fake_gptalk.prompts == []  # stopped before it went upstream
    assert await redis.smembers("gptalk:journal") == set()  # it ended, marked


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            {"error_code": 502, "description": "Bad Gateway", "html": BAD_GATEWAY_HTML},
            id="a proxy's error page",
        ),
        pytest.param(
            {
                "error_code": 429,
                "description": "Too Many Requests: retry after 6",
                "retry_after": 6,
            },
            id="a 429 longer than chatter may wait",
        ),
    ],
)
async def test_a_handed_back_prompt_that_finds_its_line_full_is_declined_despite_telegram(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    subscriber: Subscriber,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, Any],
) -> None:
    """A prompt handed back by a stopping replica, whose place lapsed before a replica
    took it, finds its line full on the one that does: its sender is told to send it
    again, also when Telegram fails that reply once or blocks the chat for longer than
    chatter may wait for a slot."""
    fake_gptalk.answer = "A **slow** answer, " + "word " * 30
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~1 s
    before = await make_bot(journal_lease=1.0)
    ann = before.user()
    before.say(ann, "first")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])), 15)
    second = before.say(ann, "second")
    await tg.wait_for(lambda: before.answerer._queued, 15)
    await before.stop()
    assert len(await redis.lrange("gptalk:handback", 0, -1)) == 1

    conversation = ConversationKey(ann["id"])
    line = RedisLine(redis, Keys("gptalk"), subscriber, limits=conversation_limits(), lease=1.0)
    for _ in range(300):  # nobody took it: its place lapses
        if await line.counts(conversation) == (0, 0):
            break
        await asyncio.sleep(0.05)
    assert await line.counts(conversation) == (0, 0)
    # Meanwhile Ann's later prompts fill the line: one runs, three wait.
    later = [await line.enter(conversation, ann["id"], order=1000 + n) for n in range(4)]
    assert await line.enter(conversation, ann["id"], order=2000) is None
    tg.fail_next("sendMessage", **fault)
    try:
        with caplog.at_level(logging.WARNING):
            after = await make_bot(journal_lease=1.0)
            await tg.wait_for(lambda: before.replies(second) == [EN.busy], 30)
            await tg.wait_for(lambda: not after.answerer._tasks, 15)
    finally:
        for ticket in later:
            assert ticket is not None
            await ticket.__aexit__(None, None, None)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    assert problems[0].exc_info is None
    assert await redis.lrange("gptalk:handback", 0, -1) == []
