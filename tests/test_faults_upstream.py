"""GPTalk failures end to end: a fault matrix against the fake GPTalk, the fake Bot API and
the private Redis.

Every row runs the same story:

1. Bob (a second chat) starts a slow, normal answer;
2. while it streams, Ann's prompt meets the row's fault(s) (queued only now, so only her
   requests meet them) — she gets what was generated so far plus a short notice, and never
   raw error text, status codes or tokens;
3. her history ends with her message and exactly what she saw (or, for an empty answer,
   with her message alone: the code stores no blank answer);
4. Bob's answer arrives complete, and he was still streaming when Ann's answer ended;
5. ``/retry`` gives Ann a normal answer that replaces the failed one in her history;
6. a later prompt is answered too, and no update handler raised.

Telegram's clock runs ten times faster (as in ``test_bot_groups``), so splitting a long
answer into many messages does not take many real seconds; GPTalk's read timeout is 0.5 s.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from bot.answering import notice_for
from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import render, split
from bot.i18n import EN
from bot.providers.gptalk import provider_error
from gptalk import APIStatusError, APITimeoutError, ProtocolError, StreamInterruptedError
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import Endpoint, FakeGPTalk, Fault
from tests.fake_telegram import FakeTelegram

SCALE = 0.1  # fake Telegram seconds = real seconds / SCALE
READ_TIMEOUT = 0.5
CHUNK = 8
DELAY = 0.05  # between data lines while Bob and Ann stream side by side

ANN_ID, BOB_ID = 1001, 1002
ANN_PROMPT = "Count for me, please"
BOB_PROMPT = "Bob asks for a long poem"
LATER_PROMPT = "And one more thing"

ANN_ANSWER = "One two three four five six seven eight nine ten."
PARTIAL = ANN_ANSWER[: 2 * CHUNK]  # what two data lines carry: "One two three fo"
BOB_ANSWER = "Steady words for Bob keep arriving here. " * 8  # 41 lines: about 2 s
RETRY_ANSWER = "A fresh and complete answer."
LATER_ANSWER = "The later question is answered as well."


def _long_answer(size: int = 50_000) -> str:
    words = ["alpha", "beta", "gamma", "delta", "zeta", "theta", "kappa", "sigma", "omega"]
    paragraphs: list[str] = []
    length = n = 0
    while length < size:
        line = " ".join(words[(n + i) % len(words)] for i in range(90)).capitalize() + "."
        paragraphs.append(line)
        length += len(line) + 2
        n += 1
    return "\n\n".join(paragraphs)[: size - 1] + "."


LONG_ANSWER = _long_answer()

# The notices, as the bot words them (bot/answering.py), one per kind of failure.
STOPPED_RESPONDING = notice_for(provider_error(APITimeoutError("stalled", endpoint="stream")), EN)
CUT_OFF = notice_for(provider_error(StreamInterruptedError("cut", received="")), EN)
UNAVAILABLE = notice_for(provider_error(APIStatusError("down", status=500, endpoint="submit")), EN)
UNREADABLE = notice_for(provider_error(ProtocolError("garbled", endpoint="stream")), EN)

# Nothing of this may reach a chat: error texts, status codes, protocol details.
FORBIDDEN = (
    "Traceback",
    "Error",
    "Exception",
    "HTTP",
    "500",
    "503",
    "401",
    "injected",
    "quota",
    "unauthorized",
    "not json",
    "data:",
    "[DONE]",
    "timed out",
    "127.0.0.1",
    "aiohttp",
    "something went wrong",
)


@dataclass(frozen=True)
class Row:
    faults: tuple[tuple[Endpoint, Fault, int], ...] = ()  # (endpoint, fault, times)
    answer: str = ANN_ANSWER  # what the fake model answers Ann's prompt
    chunk_size: int = CHUNK
    stored: str | None = ANN_ANSWER  # the assistant turn in history (= what Ann saw)
    phrase: str | None = None  # the notice's key phrase; None: a normal answer
    login_requests: int = 1  # GPTalk logins Ann's prompt costs (max uses = 1)


def _status(endpoint: Endpoint, status: int) -> Row:
    return Row(
        faults=((endpoint, Fault(status=status), 1),),
        stored=UNAVAILABLE,
        phrase="unavailable right now",
    )


MATRIX = [
    pytest.param(_status("login", 500), id="login-500"),
    pytest.param(_status("login", 503), id="login-503"),
    pytest.param(_status("submit", 500), id="submit-500"),
    pytest.param(_status("submit", 503), id="submit-503"),
    pytest.param(_status("stream", 500), id="stream-500"),
    pytest.param(_status("stream", 503), id="stream-503"),
    pytest.param(
        Row(faults=(("submit", Fault(status=401), 1),), login_requests=2),
        id="submit-401-once-relogin",
    ),
    pytest.param(
        Row(
            faults=(("submit", Fault(status=401), 2),),
            stored=UNAVAILABLE,
            phrase="unavailable right now",
            login_requests=2,
        ),
        id="submit-401-twice",
    ),
    pytest.param(
        Row(faults=(("submit", Fault(no_data=True), 1),), login_requests=2),
        id="submit-no-data-once-relogin",
    ),
    pytest.param(
        Row(
            faults=(("submit", Fault(no_data=True), 2),),
            stored=UNREADABLE,
            phrase="could not read",
            login_requests=2,
        ),
        id="submit-no-data-twice",
    ),
    pytest.param(
        Row(
            faults=(("stream", Fault(stall=3.0, after=0), 1),),
            stored=STOPPED_RESPONDING,
            phrase="stopped responding",
        ),
        id="stall-before-first-line",
    ),
    pytest.param(
        Row(
            faults=(("stream", Fault(stall=3.0, after=2), 1),),
            stored=PARTIAL + STOPPED_RESPONDING,
            phrase="stopped responding",
        ),
        id="stall-mid-stream",
    ),
    pytest.param(
        Row(
            faults=(("stream", Fault(cut_after=2), 1),),
            stored=PARTIAL + CUT_OFF,
            phrase="cut off",
        ),
        id="connection-cut-before-done",
    ),
    pytest.param(
        Row(
            faults=(("stream", Fault(end_after=2), 1),),
            stored=PARTIAL + CUT_OFF,
            phrase="cut off",
        ),
        id="clean-end-without-done",
    ),
    pytest.param(
        Row(
            faults=(("stream", Fault(malformed_after=2), 1),),
            stored=PARTIAL + UNREADABLE,
            phrase="could not read",
        ),
        id="malformed-data-line",
    ),
    pytest.param(Row(answer="", stored=None, phrase="empty answer"), id="empty-answer"),
    pytest.param(
        Row(answer=LONG_ANSWER, chunk_size=10_000, stored=LONG_ANSWER), id="answer-50000-chars"
    ),
]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """The fake Bot API with a clock ten times faster than real time."""
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


async def start(make_bot: BotFactory) -> BotHarness:
    return await make_bot(
        limits=TelegramLimits(time_scale=SCALE),
        gptalk_read_timeout=READ_TIMEOUT,
        gptalk_connect_timeout=1.0,
        gptalk_max_uses=1,  # every prompt logs in: login faults hit the prompt they follow
    )


# --- helpers ----------------------------------------------------------------------------------


async def history(redis: aioredis.Redis, chat_id: int) -> list[dict[str, str | int]]:
    return [json.loads(raw) for raw in await redis.lrange(f"gptalk:history:{chat_id}", 0, -1)]


def turn(role: str, content: str, asker: int = ANN_ID) -> dict[str, str | int]:
    return {"role": role, "content": content, "asker": asker}


def parts(markdown: str) -> list[str]:
    """The texts of the messages that show ``markdown``, as Telegram stores them."""
    return [part.text for part in split(render(markdown))]


def texts_sent(tg: FakeTelegram, chat_id: int | None = None) -> list[tuple[float, str]]:
    """(fake time, text) of every message text the bot sent or edited in (to ``chat_id``)."""
    calls = [*tg.calls_to("sendMessage", chat_id), *tg.calls_to("editMessageText", chat_id)]
    return sorted((call.at, str(call.params.get("text", ""))) for call in calls if call.ok)


def assert_nothing_leaked(tg: FakeTelegram, fake: FakeGPTalk) -> None:
    secrets = [*fake.issued_tokens(), *fake.issued_stream_tokens()]
    assert secrets  # the check below means something
    calls = [*tg.calls_to("sendMessage"), *tg.calls_to("editMessageText")]
    for call in calls:
        text = str(call.params.get("text", ""))
        leaked = [word for word in (*FORBIDDEN, *secrets) if word in text]
        assert not leaked, (leaked, text)


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []


# --- the matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize("row", MATRIX)
async def test_upstream_fault(
    row: Row,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    script = {"ann": row.answer}
    fake_gptalk.reply = lambda prompt: BOB_ANSWER if BOB_PROMPT in prompt else script["ann"]
    fake_gptalk.chunk_size, fake_gptalk.delay = CHUNK, DELAY
    harness = await start(make_bot)
    ann, bob = harness.user(ANN_ID, "Ann"), harness.user(BOB_ID, "Bob")

    # Bob's answer streams; only then are the faults queued, so only Ann's requests meet them.
    bob_question = harness.say(bob, BOB_PROMPT)
    await tg.wait_for(lambda: fake_gptalk.streams == 1)
    logins_before = len(fake_gptalk.requests_to("login"))
    fake_gptalk.chunk_size = row.chunk_size  # Bob's lines are cut already
    for endpoint, fault, times in row.faults:
        fake_gptalk.fail(endpoint, fault, times=times)
    question = harness.say(ann, ANN_PROMPT)
    await harness.settle(within=30)
    for endpoint in ("login", "submit", "stream"):
        assert fake_gptalk.pending_faults(endpoint) == 0, endpoint
    assert len(fake_gptalk.requests_to("login")) - logins_before == row.login_requests

    # (1) Ann sees the text so far, then a short notice; nothing raw anywhere.
    expected = parts(row.stored) if row.stored is not None else [EN.empty_answer]
    assert [m.text for m in tg.bot_messages(ANN_ID)] == expected
    assert harness.answer(question) == "".join(expected)
    if row.phrase is not None:
        assert row.phrase in expected[-1]
        assert "/retry" in expected[-1]  # the notice says what to do
    if row.phrase is not None and row.stored is not None and row.stored.startswith(PARTIAL):
        # The text grew as it streamed, and the notice came only after it, at the end.
        [message] = tg.bot_messages(ANN_ID)
        *before, final = message.history
        assert all(PARTIAL.startswith(version) for version in before), before
        assert final.startswith(PARTIAL + "\n\n⚠️")
        if row.faults[0][1].stall:  # a stall leaves time to show the text before the notice
            assert PARTIAL in before
    if row.answer == LONG_ANSWER:  # complete, in several messages, nothing lost
        assert len(expected) >= 12
        assert "".join(harness.answer(question).split()) == "".join(LONG_ANSWER.split())

    # (2) History: Ann's turn, then exactly what she saw (no blank answer is stored).
    stored = await history(redis, ANN_ID)
    if row.stored is None:
        assert stored == [turn("user", ANN_PROMPT)]
    else:
        assert stored == [turn("user", ANN_PROMPT), turn("assistant", row.stored)]
        assert parts(stored[-1]["content"]) == [m.text for m in tg.bot_messages(ANN_ID)]

    # (4) Bob's answer is complete, and it was still streaming when Ann's had ended.
    assert harness.answer(bob_question) == render(BOB_ANSWER).text
    ann_end = texts_sent(tg, ANN_ID)[-1][0]
    bob_end = texts_sent(tg, BOB_ID)[-1][0]
    assert bob_end > ann_end
    assert await history(redis, BOB_ID) == [
        turn("user", BOB_PROMPT, BOB_ID),
        turn("assistant", BOB_ANSWER, BOB_ID),
    ]

    # (3) /retry: a normal, complete answer, which replaces the failed one in history.
    fake_gptalk.delay = 0.0
    script["ann"] = RETRY_ANSWER
    retry = harness.say(ann, "/retry")
    await harness.settle()
    assert harness.replies(retry) == [RETRY_ANSWER]
    assert await history(redis, ANN_ID) == [
        turn("user", ANN_PROMPT),
        turn("assistant", RETRY_ANSWER),
    ]

    # (5) The bot keeps polling and answering; no handler raised.
    script["ann"] = LATER_ANSWER
    later = harness.say(ann, LATER_PROMPT)
    await harness.settle()
    assert harness.answer(later) == LATER_ANSWER
    assert await history(redis, ANN_ID) == [
        turn("user", ANN_PROMPT),
        turn("assistant", RETRY_ANSWER),
        turn("user", LATER_PROMPT),
        turn("assistant", LATER_ANSWER),
    ]
    assert harness.tracker.errors == []
    assert_nothing_leaked(tg, fake_gptalk)
    no_rejections(tg)


# --- GPTalk not there at all ------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more


async def test_gptalk_unreachable_gives_a_notice_and_no_crash(
    tg: FakeTelegram, redis: aioredis.Redis, redis_url: str
) -> None:
    port = closed_port()
    nowhere = FakeGPTalk()  # never started: only its URL is used
    nowhere.url = f"http://127.0.0.1:{port}"
    harness = BotHarness(
        tg,
        nowhere,
        redis_url=redis_url,
        limits=TelegramLimits(time_scale=SCALE),
        gptalk_read_timeout=READ_TIMEOUT,
        gptalk_connect_timeout=1.0,
    )
    await harness.start()
    try:
        ann = harness.user(ANN_ID, "Ann")
        first = harness.say(ann, ANN_PROMPT)
        await harness.settle()
        assert harness.answer(first) == render(UNAVAILABLE).text
        assert await history(redis, ANN_ID) == [
            turn("user", ANN_PROMPT),
            turn("assistant", UNAVAILABLE),
        ]
        # Still polling: the next prompt gets the same notice, not silence or a crash.
        second = harness.say(ann, LATER_PROMPT)
        await harness.settle()
        assert harness.answer(second) == render(UNAVAILABLE).text
        assert harness.tracker.errors == []
        for _, text in texts_sent(tg):
            assert str(port) not in text
            assert not [word for word in FORBIDDEN if word in text], text
        no_rejections(tg)
    finally:
        await harness.stop()
