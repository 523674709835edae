"""Draft streaming in private chats, STREAM_MODE=draft (issue 11, section 2)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import Rendered, render, split
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

SCALE = 0.1
GROUP_ID = -100123


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


async def start(make_bot: BotFactory, **settings: Any) -> BotHarness:
    settings.setdefault("stream_mode", "draft")
    return await make_bot(limits=TelegramLimits(time_scale=SCALE), **settings)


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0


async def test_a_fast_stream_is_paced_and_ends_with_real_messages(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "**Autumn** leaves _fall_ on the path. " * 300  # ~11000 chars
    fake_gptalk.chunk_size, fake_gptalk.delay = 40, 0.01  # ~3 s, a delta every 0.1 s
    harness = await start(make_bot, draft_interval=2.0)
    ann = harness.user()
    question = harness.say(ann, "Write about autumn")
    await harness.settle()
    drafts = tg.drafts
    assert len(drafts) >= 3
    assert all(d.chat_id == ann["id"] and d.can_stop for d in drafts)
    assert len({d.draft_id for d in drafts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(drafts)]
    assert min(gaps) >= 2.0 * 0.8  # one per DRAFT_INTERVAL (arrival jitter aside)
    # real messages: parts that filled up while streaming, and the rest at the end
    messages = tg.bot_messages(ann["id"])
    assert len(messages) == 3
    assert "".join(m.text for m in messages) == harness.answer(question)
    assert harness.answer(question) == "".join(p.text for p in _parts(fake_gptalk.answer))
    assert tg.calls_to("editMessageText") == []
    assert all(m.reply_markup is None for m in messages)  # the draft had the stop button
    no_rejections(tg)


def _parts(markdown: str) -> list[Rendered]:
    return split(render(markdown))


async def test_the_draft_is_refreshed_while_the_model_is_silent(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "Thinking about it. And here is the rest."
    fake_gptalk.chunk_size = 19
    fake_gptalk.fail("stream", stall=4.5, after=1)  # 45 Telegram seconds of silence
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "hm?")
    await harness.settle()
    silent = [d for d in tg.drafts if d.text == "Thinking about it."]
    assert len(silent) >= 3  # the first, then every ≤20 s: at ~20 and ~40
    gaps = [b.at - a.at for a, b in itertools.pairwise(silent)]
    assert max(gaps) <= 20 + 3
    assert harness.answer(question) == fake_gptalk.answer
    no_rejections(tg)


async def test_a_draft_refused_falls_back_to_edits_without_losing_text(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05
    tg.fail_next(
        "sendMessageDraft", error_code=400, description="Bad Request: method not available"
    )
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    await harness.settle()
    assert tg.drafts == []
    assert [c.ok for c in tg.calls_to("sendMessageDraft")] == [False]  # tried once
    assert harness.answer(question) == render(fake_gptalk.answer).text
    assert tg.calls_to("editMessageText")  # streamed by edits
    assert all(m.reply_markup is None for m in tg.bot_messages(ann["id"]))
    assert tg.too_many_requests == 0


async def test_a_429_on_a_draft_cools_the_chat_down_without_a_send(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05
    harness = await start(make_bot)
    ann = harness.user()
    tg.fail_next(
        "sendMessageDraft", error_code=429, description="Too Many Requests: retry after 5",
        retry_after=5,
    )  # fmt: skip
    question = harness.say(ann, "talk")
    await harness.settle()
    [refused] = [c for c in tg.calls_to("sendMessageDraft") if not c.ok]
    later = [c for c in tg.calls if c.at > refused.at and c.method != "getUpdates"]
    assert all(c.at >= refused.at + 5 for c in later if c.method != "sendChatAction")
    assert tg.drafts  # still drafts after the penalty: no fallback
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_groups_always_edit_and_the_draft_button_stops(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05
    harness = await start(make_bot)
    ann = harness.user()
    question = harness.say(ann, "talk")
    await tg.wait_for(lambda: bool(tg.drafts))
    tg.stop_generation(ann["id"], tg.drafts[0].draft_id)
    harness.expect_pending()
    await harness.settle()
    stopped = harness.answer(question)
    assert stopped.endswith("Stopped.")
    assert 0 < stopped.count("word") < 80

    group = tg.group_chat(GROUP_ID, "Book club")
    bot = "@gptalk_test_bot"
    mention = {"type": "mention", "offset": 0, "length": len(bot)}
    asked = harness.say(ann, f"{bot} talk", chat=group, entities=[mention])
    await harness.settle()
    assert not [d for d in tg.drafts if d.chat_id == GROUP_ID]
    assert harness.answer(asked) == render(fake_gptalk.answer).text
    no_rejections(tg)


async def test_the_draft_button_stops_an_answer_running_on_another_replica(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    """Two replicas on one Redis: the prompt goes to one, the draft's stop to the other."""
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.1  # ~1 s of streaming
    runs, hears = await start(make_bot), await start(make_bot)
    ann = runs.user()
    question = tg.user_message(tg.private_chat(ann), ann, "talk")
    runs.feed()
    await tg.wait_for(lambda: bool(tg.drafts))
    tg.stop_generation(ann["id"], tg.drafts[0].draft_id)
    hears.feed()
    await hears.settle()
    await runs.settle()
    stopped = runs.answer(question)
    assert stopped.endswith("Stopped.")  # by the replica that streamed it
    assert 0 < stopped.count("word") < 80
    # (Two long polls on one token conflict, as at Telegram: these replicas are fed.)
    assert [c.method for c in tg.calls if not c.ok and c.method != "getUpdates"] == []
    assert tg.too_many_requests == 0
