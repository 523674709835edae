"""Many conversations at once in one process: fake servers, real Redis, real aiogram.

Telegram's clock runs in real time for the 200 conversations: scaling it would also
scale the event loop's lag under that load, which the bot's safety margins are sized
for in real seconds. The burst with a group runs five times faster (a group's minute
in 12 s): the margins are one Telegram second, 0.2 s of real lag there, ample for 85
conversations.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import redis.asyncio as aioredis

from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import render
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import Call, FakeTelegram

CONVERSATIONS = 200


async def test_200_conversations_stream_at_once(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    submitted: list[float] = []

    def answer_for(prompt: str) -> str:
        return f"Answer for {prompt}: " + "streamed words " * 40

    def reply(prompt: str) -> str:
        submitted.append(time.monotonic())
        return answer_for(prompt)

    fake_gptalk.reply = reply
    fake_gptalk.chunk_size, fake_gptalk.delay = 30, 0.3  # ~6 s of streaming per answer

    before = asyncio.all_tasks()
    harness = await make_bot()
    users = [harness.user(10_000 + i, f"U{i}") for i in range(CONVERSATIONS)]
    started = time.monotonic()
    questions = [harness.say(user, f"user {i:03}") for i, user in enumerate(users)]
    await harness.settle(within=180)
    elapsed = time.monotonic() - started

    for i, question in enumerate(questions):
        expected = render(answer_for(f"user {i:03}")).text
        assert harness.answer(question) == expected, question["chat"]["id"]
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0
    assert fake_gptalk.submits == CONVERSATIONS
    assert fake_gptalk.logins == CONVERSATIONS // 5
    # The GPTalk streams ran side by side. Each stream lasts ≥ 3 s after its submit,
    # so N submits within 2.5 s mean N connections open at once; with aiohttp's
    # default pool of 100 connections, N could not exceed 100. (Submits themselves
    # are spread by the 40 logins, which happen one at a time by design.)
    overlapping = max(sum(1 for t in submitted if start <= t < start + 2.5) for start in submitted)
    assert overlapping > 150, overlapping

    await harness.stop()
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = {t for t in asyncio.all_tasks() - before if not t.done() and t is not current}
    assert leaked == set()
    calls = len([c for c in tg.calls if c.method in ("sendMessage", "editMessageText")])
    print(
        f"{CONVERSATIONS} conversations: all answered in {elapsed:.1f} s, {calls} send/edit "
        f"calls, 0 × 429, {fake_gptalk.logins} GPTalk logins, {overlapping} streams at once"
    )


def answer_for(prompt: str) -> str:
    """Short answers in private chats, long ones in the group (they fill its minute)."""
    [question] = re.findall(r"private question \d+|\w+'s garden", prompt)[-1:]
    if "garden" in question:
        lines = "\n".join(f"Line {i}: _{question}_, slowly." for i in range(1, 46))
        return f"**A poem: {question}**\n\n{lines}"
    return f"Answer to {question}: " + "short words " * 8


def busiest_minute(calls: list[Call]) -> int:
    times = sorted(call.at for call in calls)
    return max(sum(t <= u < t + 60.0 for u in times) for t in times)


async def test_80_private_chats_and_a_five_asker_group_at_once_with_chat_actions_counted(
    fake_gptalk: FakeGPTalk, redis: aioredis.Redis, redis_url: str
) -> None:
    """Every answer starts with "typing…" at the same moment, and the fake counts chat
    actions like messages in every limit (as Telegram does: hermes-agent #99643). With
    "typing…" outside the budgets (b382bd2) one run drew 72 × 429; inside them, none."""
    scale = 0.2
    fake_gptalk.reply = answer_for
    # ~1 real s (5 Telegram s) per private answer, ~10 s (50) per group answer
    fake_gptalk.chunk_size, fake_gptalk.delay = 12, 0.08
    async with FakeTelegram(time_scale=scale) as tg:
        harness = BotHarness(
            tg, fake_gptalk, redis_url=redis_url, limits=TelegramLimits(time_scale=scale)
        )
        await harness.start()
        try:
            group = tg.group_chat(-100123, "Book club")
            started = time.monotonic()
            privates = [
                harness.say(harness.user(20_000 + i, f"U{i}"), f"private question {i:02}")
                for i in range(80)
            ]
            mention: list[dict[str, Any]] = [{"type": "mention", "offset": 0, "length": 16}]
            in_group = [
                harness.say(
                    harness.user(i, name), f"@gptalk_test_bot {name.lower()}'s garden",
                    chat=group, entities=mention,
                )
                for i, name in enumerate(["Ann", "Bob", "Cid", "Dee", "Eve"], start=1)
            ]  # fmt: skip
            await harness.settle(within=150)
            elapsed = time.monotonic() - started
        finally:
            await harness.stop()

    actions = [c for c in tg.calls_to("sendChatAction") if c.ok]
    in_the_group = [c for c in tg.calls if c.ok and c.params.get("chat_id") == group["id"]]
    print(
        f"\n80 private chats + 5 askers in a group: {len(tg.calls_to('sendMessage'))} "
        f"sendMessage, {len(tg.calls_to('editMessageText'))} editMessageText, "
        f"{len(actions)} sendChatAction, {tg.too_many_requests} x 429; done in "
        f"{elapsed:.1f} s real = {elapsed / scale:.0f} s on Telegram's clock; the group: "
        f"{len(in_the_group)} calls, {busiest_minute(in_the_group)} in its busiest minute"
    )
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0
    for question in [*privates, *in_group]:
        chat_id, message_id = question["chat"]["id"], question["message_id"]
        assert tg.visible_text(chat_id, message_id) == render(answer_for(question["text"])).text
    assert actions  # "typing…" still shows where there is room for it
    # The group's answers filled its minute (20 calls), and their last calls waited
    # for it to slide: whatever typing it had, had to fit in it.
    assert busiest_minute(in_the_group) == 20
    assert len(in_the_group) > 20
