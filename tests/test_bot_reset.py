"""``/new`` racing the prompts around it, with replicas on one Redis (issue 18).

``/new`` stops the conversation's running answers in every replica and clears its
history. Stopping an answer lets the prompt waiting behind it start, so that prompt
must find the conversation already new: its question and answer are the start of the
next conversation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from bot.i18n import EN
from tests.conftest import BotFactory, FarRedis
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.scaled_bot import SCALE, last_turn, start


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


def long_or_short(prompt: str) -> str:
    """Seconds of streaming for the first question, a short answer for the others."""
    question = last_turn(prompt)
    if question == "first":
        return "A long one. " + "word " * 300
    return f"On {question}."


async def history(redis: aioredis.Redis, chat_id: int) -> list[tuple[str, str]]:
    raw = await redis.lrange(f"gptalk:history:{chat_id}", 0, -1)
    return [(t["role"], t["content"]) for t in map(json.loads, raw)]


async def test_a_prompt_waiting_behind_the_answer_new_stops_starts_in_the_new_conversation(
    far_redis: FarRedis,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    # /new reaches a replica far from Redis: the answer it stops, on a near replica,
    # ends and lets the waiting prompt start long before the far one hears back from
    # every replica. The waiting prompt must still find the history cleared.
    fake_gptalk.reply = long_or_short
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # the long one: ~15 s
    near = await start(make_bot, replica_id="near")
    far = await start(make_bot, redis_url=await far_redis(0.3), replica_id="far")
    ann = near.user()
    chat = tg.private_chat(ann)
    first = tg.user_message(chat, ann, "first")
    waiting = tg.user_message(chat, ann, "second")
    near.feed()  # (two long polls on one token conflict, as at Telegram: replicas are fed)
    await tg.wait_for(lambda: bool(near.replies(first)))
    tg.user_message(chat, ann, "/new")
    far.feed()
    await far.settle()
    await near.settle()

    [stopped] = near.replies(first)
    assert stopped.endswith(render(EN.reset.strip()).text)
    assert near.replies(waiting) == ["On second."]
    assert await history(redis, ann["id"]) == [("user", "second"), ("assistant", "On second.")]
    assert fake_gptalk.prompts[-1] == "second"  # nothing from before /new
