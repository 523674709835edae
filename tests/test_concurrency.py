"""Many conversations at once in one process: fake servers, real Redis, real aiogram.

Telegram's clock runs in real time here: scaling it would also scale the event
loop's lag under this load, which the bot's safety margins are sized for in real
seconds.
"""

from __future__ import annotations

import asyncio
import time

from bot.delivery.render import render
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

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
