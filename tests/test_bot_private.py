"""Private chats end to end: real dispatcher and Redis, fake Bot API and fake GPTalk."""

from __future__ import annotations

import asyncio
import json
import math
import time

import redis.asyncio as aioredis

from bot.delivery.render import render, split
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram


def echo(prompt: str) -> str:
    """The fake model answers with the last line it was asked."""
    last = prompt.rsplit("\n", 2)[-2] if prompt.endswith("Assistant:") else prompt
    return f"**Echo:** {last.removeprefix('User: ')}"


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0


async def test_prompt_is_answered_with_the_rendered_stream(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "**Autumn**\n\nLeaves _fall_ on the `path`. " * 8
    fake_gptalk.chunk_size, fake_gptalk.delay = 12, 0.05
    harness = await make_bot()
    ann = harness.user()
    started = time.monotonic()
    question = harness.say(ann, "Write about autumn")
    await harness.settle()
    elapsed = time.monotonic() - started
    [message] = tg.bot_messages(ann["id"])
    final = render(fake_gptalk.answer)
    assert message.text == final.text
    assert message.reply_to == question["message_id"]
    assert {e["type"] for e in message.entities} == {"bold", "italic", "code"}
    assert len(tg.calls_to("editMessageText")) <= math.ceil(elapsed / 1.0) + 2
    assert tg.calls_to("sendChatAction")[0].params["action"] == "typing"
    assert fake_gptalk.prompts == ["Write about autumn"]
    no_rejections(tg)


async def test_history_is_carried_and_cleared_by_new(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    harness = await make_bot(system_prompt="Be brief.")
    ann = harness.user()
    harness.say(ann, "first")
    await harness.settle()
    harness.say(ann, "second")
    await harness.settle()
    assert fake_gptalk.prompts[1] == (
        "System: Be brief.\nUser: first\nAssistant: **Echo:** first\nUser: second\nAssistant:"
    )
    stored = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert stored == [
        {"role": "user", "content": "first", "asker": 1001},
        {"role": "assistant", "content": "**Echo:** first", "asker": 1001},
        {"role": "user", "content": "second", "asker": 1001},
        {"role": "assistant", "content": "**Echo:** second", "asker": 1001},
    ]
    assert 0 < await redis.ttl(f"gptalk:history:{ann['id']}") <= 604800

    harness.say(ann, "/new")
    await harness.settle()
    assert await redis.exists(f"gptalk:history:{ann['id']}") == 0
    harness.say(ann, "third")
    await harness.settle()
    assert fake_gptalk.prompts[-1] == "System: Be brief.\nUser: third\nAssistant:"
    no_rejections(tg)


async def test_history_is_trimmed_to_the_prompt_budget(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "x" * 300
    harness = await make_bot(prompt_max_chars=1000, history_max_messages=50)
    ann = harness.user()
    for i in range(6):
        harness.say(ann, f"question {i}")
        await harness.settle()
    last = fake_gptalk.prompts[-1]
    assert len(last) <= 1000
    assert last.startswith("User: question")  # oldest turns dropped, a turn starts with the user
    assert last.endswith("User: question 5\nAssistant:")


async def test_retry_regenerates_the_last_answer(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    answers = iter(["first answer", "second answer"])
    fake_gptalk.reply = lambda prompt: next(answers)
    harness = await make_bot()
    ann = harness.user()
    harness.say(ann, "question")
    await harness.settle()
    retry = harness.say(ann, "/retry")
    await harness.settle()
    assert fake_gptalk.prompts == ["question", "question"]
    assert harness.replies(retry) == ["second answer"]
    assert [m.text for m in tg.bot_messages(ann["id"])] == ["first answer", "second answer"]
    stored = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert stored == [
        {"role": "user", "content": "question", "asker": 1001},
        {"role": "assistant", "content": "second answer", "asker": 1001},
    ]


async def test_retry_with_nothing_to_retry(make_bot: BotFactory, fake_gptalk: FakeGPTalk) -> None:
    harness = await make_bot()
    retry = harness.say(harness.user(), "/retry")
    await harness.settle()
    assert "nothing to retry" in harness.replies(retry)[0].lower()
    assert fake_gptalk.submits == 0


async def test_stop_keeps_the_text_so_far_marked(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "word " * 400
    fake_gptalk.chunk_size, fake_gptalk.delay = 5, 0.05
    harness = await make_bot()
    ann = harness.user()
    question = harness.say(ann, "talk a lot")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])))
    await asyncio.sleep(1.0)
    harness.say(ann, "/stop")
    await harness.settle()
    text = harness.answer(question)
    assert text.endswith("Stopped.")
    assert 0 < text.count("word") < 400
    stored = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert stored[-1]["role"] == "assistant"
    assert stored[-1]["content"].endswith("⏹ _Stopped._")
    no_rejections(tg)


async def test_stop_without_a_running_answer(make_bot: BotFactory) -> None:
    harness = await make_bot()
    stop = harness.say(harness.user(), "/stop")
    await harness.settle()
    [reply] = harness.tg.bot_messages(stop["chat"]["id"])
    assert reply.text.startswith("Nothing to stop")


async def test_queued_prompts_are_answered_in_order(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.reply = echo
    fake_gptalk.chunk_size, fake_gptalk.delay = 3, 0.05
    harness = await make_bot()
    ann = harness.user()
    questions = [harness.say(ann, f"q{i}") for i in range(4)]  # 1 running + 3 waiting
    await harness.settle()
    assert [p.rsplit("User: ", 1)[-1] for p in fake_gptalk.prompts] == [
        "q0",
        "q1\nAssistant:",
        "q2\nAssistant:",
        "q3\nAssistant:",
    ]
    for i, question in enumerate(questions):
        assert harness.answer(question) == f"Echo: q{i}"
    no_rejections(tg)


async def test_a_full_queue_gets_a_please_wait(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.chunk_size, fake_gptalk.delay = 30, 0.3  # ~2 s per answer
    harness = await make_bot()
    ann = harness.user()
    questions = [harness.say(ann, f"q{i}") for i in range(6)]
    await harness.settle(within=60)
    busy = [q for q in questions if any("still answering" in r for r in harness.replies(q))]
    assert [q["text"] for q in busy] == ["q4", "q5"]
    assert fake_gptalk.submits == 4


async def test_two_conversations_stream_at_the_same_time(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "slowly " * 30
    fake_gptalk.chunk_size, fake_gptalk.delay = 7, 0.1
    harness = await make_bot()
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    started = time.monotonic()
    harness.say(ann, "hi")
    harness.say(bob, "hi")
    await harness.settle()
    elapsed = time.monotonic() - started
    one_answer = 30 * 0.1  # lines × delay
    assert elapsed < 2 * one_answer  # they overlapped
    for user in (ann, bob):
        assert [m.text for m in tg.bot_messages(user["id"])] == [render(fake_gptalk.answer).text]
    no_rejections(tg)


async def test_gptalk_failure_gives_a_notice_then_recovers(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot()
    ann = harness.user()
    fake_gptalk.fail("submit", status=500)
    broken = harness.say(ann, "hello")
    await harness.settle()
    assert "GPTalk is unavailable right now" in harness.answer(broken)
    assert "500" not in harness.answer(broken)  # no raw error text
    fine = harness.say(ann, "hello again")
    await harness.settle()
    assert harness.answer(fine) == render(fake_gptalk.answer).text
    retry = harness.say(ann, "/retry")
    await harness.settle()
    assert harness.replies(retry) == [render(fake_gptalk.answer).text]
    no_rejections(tg)


async def test_stall_past_the_read_timeout_keeps_the_text_and_marks_it(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "The beginning of a long story that never ends"
    fake_gptalk.chunk_size = 10
    fake_gptalk.fail("stream", stall=5, after=2)
    harness = await make_bot(gptalk_read_timeout=0.5)
    ann = harness.user()
    question = harness.say(ann, "tell me")
    await harness.settle()
    text = harness.answer(question)
    assert text.startswith("The beginning of a")
    assert "GPTalk stopped responding" in text
    stored = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert "stopped responding" in stored[-1]["content"]


async def test_cut_stream_keeps_the_text_and_marks_it(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "One two three four five six seven"
    fake_gptalk.chunk_size = 8
    fake_gptalk.fail("stream", cut_after=2)
    harness = await make_bot()
    question = harness.say(harness.user(), "count")
    await harness.settle()
    text = harness.answer(question)
    assert text.startswith("One two three")
    assert "cut off" in text


async def test_long_answer_is_split_across_messages(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum " * 60 for i in range(20))
    fake_gptalk.chunk_size = 2000
    harness = await make_bot()
    ann = harness.user()
    harness.say(ann, "long please")
    await harness.settle()
    assert [m.text for m in tg.bot_messages(ann["id"])] == [
        p.text for p in split(render(fake_gptalk.answer))
    ]
    assert len(tg.bot_messages(ann["id"])) >= 3
    no_rejections(tg)


async def test_commands_and_non_text(make_bot: BotFactory, tg: FakeTelegram) -> None:
    harness = await make_bot()
    ann = harness.user()
    for text in ("/start", "/help", None, "/frobnicate"):
        harness.say(ann, text, sticker=text is None)
    await harness.settle()
    texts = sorted(m.text for m in tg.bot_messages(ann["id"]))  # handled concurrently
    assert len(texts) == 4
    assert any(t.startswith("Hi, Ann!") and "/retry" in t for t in texts)
    assert any(t.startswith("Send me any message") for t in texts)
    assert any("only read text" in t for t in texts)
    assert any("don't know that command" in t for t in texts)
    assert harness.gptalk.submits == 0


async def test_in_process_stores_without_redis(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = echo
    harness: BotHarness = await make_bot(redis_url=None)
    ann = harness.user()
    harness.say(ann, "one")
    await harness.settle()
    harness.say(ann, "two")
    await harness.settle()
    assert "User: one\nAssistant: **Echo:** one" in fake_gptalk.prompts[-1]
    assert await redis.keys("*") == []


async def test_a_photo_caption_in_private_is_a_prompt(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    ann = harness.user()
    photo = harness.say(ann, photo=True, caption="What is in this picture?")
    await harness.settle()
    assert fake_gptalk.prompts == ["What is in this picture?"]
    assert harness.answer(photo) == render(fake_gptalk.answer).text
