"""Split pastes under the bot's caps, end to end (real dispatcher, fake Bot API and
GPTalk, in-process stores or the test's Redis).

A paste is one prompt, but every piece is a message: it may have at most
``PASTE_MAX_PARTS`` pieces and ``PROMPT_MAX_CHARS`` characters, and each piece counts
for ``USER_RATE_LIMIT``. Over a cap nothing goes upstream and nothing is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from yarl import URL

from bot.delivery.render import render
from bot.i18n import EN
from bot.storage.history import Turn
from bot.storage.keys import ConversationKey
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.slow_link import SlowLink

SLOW = 30.0  # a merge window no assertion could wait out by accident
# The report's pieces came 0.3 s apart with MERGE_WINDOW=1.5: well within the window.
GAP = 0.05

Json = dict[str, Any]


def paste(size: int, tag: str) -> str:
    """Lines of code, trimmed to ``size`` characters as Telegram trims every message."""
    lines = "".join(f"    {tag}_{n:04d} = compute({n}, 'x')  # step {n}\n" for n in range(size))
    text = lines[:size].strip()
    return text + "z" * (size - len(text))


@pytest.fixture(params=["memory", "redis"])
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the in-process stores, or none: the test's Redis."""
    return {"redis_url": None} if request.param == "memory" else {}


async def send(harness: BotHarness, user: Json, texts: list[str]) -> list[Json]:
    sent = []
    for text in texts:
        sent.append(harness.say(user, text))
        await asyncio.sleep(GAP)
    return sent


async def history(harness: BotHarness, user: Json) -> list[Turn]:
    loaded: list[Turn] = await harness.answerer.history.load(ConversationKey(user["id"]))
    return loaded


async def test_ten_long_pieces_are_refused_whole(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, mode: dict[str, Any]
) -> None:
    # The report: ten messages of 4,000 characters and a short one were one upstream
    # prompt of 40,022 characters, past PROMPT_MAX_CHARS and USER_RATE_LIMIT alike.
    harness = await make_bot(merge_window=SLOW, prompt_max_chars=12000, user_rate_limit=2, **mode)
    ann = harness.user()
    texts = [paste(4000, f"p{n}") for n in range(10)] + ["What's this?"]
    first, *_ = await send(harness, ann, texts)
    await harness.settle(within=SLOW / 2)  # the short piece ended the paste at once
    assert fake_gptalk.prompts == []
    [notice] = tg.bot_messages(ann["id"])
    assert notice.reply_to == first["message_id"]
    assert notice.text == (
        "Your message has 40022 characters; I can take 12000. Send it as a file."
    )
    assert await history(harness, ann) == []
    # Refused, it took none of the rate limit's slots, and left nothing behind.
    question = harness.say(ann, "hello")
    await harness.settle()
    assert fake_gptalk.prompts == ["hello"]
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_a_paste_over_paste_max_parts_is_refused_whole(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, mode: dict[str, Any]
) -> None:
    harness = await make_bot(merge_window=SLOW, paste_max_parts=2, **mode)
    ann = harness.user()
    first, *_ = await send(harness, ann, [paste(4000, "a"), paste(4000, "b"), paste(100, "c")])
    await harness.settle(within=SLOW / 2)
    assert fake_gptalk.prompts == []
    # 8,102 characters is within PROMPT_MAX_CHARS: the pieces are what is over.
    assert [(m.text, m.reply_to) for m in tg.bot_messages(ann["id"])] == [
        (
            "Your message has 8102 characters; I can take 8001. Send it as a file.",
            first["message_id"],
        )
    ]
    assert await history(harness, ann) == []


async def test_a_paste_that_crosses_the_rate_limit_is_dropped_whole(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, mode: dict[str, Any]
) -> None:
    harness = await make_bot(merge_window=SLOW, user_rate_limit=2, **mode)
    ann = harness.user()
    harness.say(ann, "hi")
    await harness.settle()
    assert fake_gptalk.prompts == ["hi"]  # one of two slots taken
    first, *_ = await send(harness, ann, [paste(4000, "a"), paste(100, "b")])
    await harness.settle(within=SLOW / 2)
    assert fake_gptalk.prompts == ["hi"]  # two pieces: one more than fits
    [notice] = harness.replies(first)
    assert notice.startswith(EN.slow_down.split("{", 1)[0])
    assert [turn["content"] for turn in await history(harness, ann)] == [
        "hi",
        fake_gptalk.answer,
    ]
    # Dropped whole: the paste took no slot, so one message still fits.
    harness.say(ann, "and now?")
    await harness.settle()
    assert len(fake_gptalk.prompts) == 2
    assert fake_gptalk.prompts[1].endswith("User: and now?\nAssistant:")
    assert paste(4000, "a") not in fake_gptalk.prompts[1]


@pytest.fixture
async def far_link(redis_url: str) -> AsyncIterator[SlowLink]:
    """The test's Redis as a replica far from it sees it: every answer 0.2 s late.
    (Requested before ``make_bot``, it outlives the replicas that use it.)"""
    link = await SlowLink(URL(redis_url).port or 6379, delay=0.2).start()
    yield link
    await link.aclose()


async def paste_opened(redis: aioredis.Redis) -> None:
    async with asyncio.timeout(10):
        while not await redis.keys("gptalk:paste:*"):  # noqa: ASYNC110 - Redis has no event
            await asyncio.sleep(0.005)


async def test_back_to_back_pastes_both_reach_upstream_in_order(
    far_link: SlowLink,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    # The report: with Redis, the sender's next paste, opened right after one was
    # complete, wiped the first one's pieces before the replica waiting for them took
    # them, and '' went upstream. Here that replica is far from Redis, so the next
    # paste always opens first; the window is long enough for the first to be in line
    # before the second is complete.
    settings: dict[str, Any] = {"merge_window": 3.0, "prompt_max_chars": 20000}
    far = await make_bot(redis_url=far_link.url, replica_id="far", **settings)
    near = await make_bot(replica_id="near", **settings)
    ann = near.user()
    chat = tg.private_chat(ann)
    a, b, c = paste(4000, "a"), paste(3000, "b"), paste(4000, "c")
    first = tg.user_message(chat, ann, a)
    far.feed()  # (two long polls on one token conflict, as at Telegram: replicas are fed)
    await paste_opened(redis)
    tg.user_message(chat, ann, b)  # completes the first paste
    near.feed()
    await near.settle()
    second = tg.user_message(chat, ann, c)  # the far replica has not taken a and b yet
    near.feed()
    await near.settle()
    await far.settle()
    # Neither alone ('') nor after the history ("User: \nAssistant:") an empty question.
    assert not [p for p in fake_gptalk.prompts if not p.strip() or p.endswith(": \nAssistant:")]
    assert len(fake_gptalk.prompts) == 2
    assert fake_gptalk.prompts[0] == f"{a}\n{b}"
    assert fake_gptalk.prompts[1] == (
        f"User: {a}\n{b}\nAssistant: {fake_gptalk.answer}\nUser: {c}\nAssistant:"
    )
    assert far.replies(first) == near.replies(second) == [render(fake_gptalk.answer).text]


async def test_a_message_over_prompt_max_chars_is_refused_like_a_paste(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    # Only a paste can be longer than the default PROMPT_MAX_CHARS, but a smaller one
    # applies to single messages the same way.
    harness = await make_bot(prompt_max_chars=100)
    ann = harness.user()
    question = harness.say(ann, "y" * 150)
    await harness.settle()
    assert fake_gptalk.prompts == []
    assert harness.replies(question) == [
        "Your message has 150 characters; I can take 100. Send it as a file."
    ]
    assert await history(harness, ann) == []


async def test_an_empty_question_never_goes_upstream(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    # A conversation as the paste race left it: an empty question in the history.
    harness = await make_bot()
    ann = harness.user()
    await harness.answerer.history.append(
        ConversationKey(ann["id"]), Turn(role="user", content="", asker=ann["id"])
    )
    retry = harness.say(ann, "/retry", entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    await harness.settle()
    assert fake_gptalk.prompts == []
    assert harness.replies(retry) == [EN.empty_prompt]
