"""The streaming editor against the strict fake Bot API, through real aiogram.

Limits are the fake's (Telegram's model); the bot paces itself with its own,
slightly stricter, model. Every test asserts that no call was rejected unless it
injected the rejection.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from aiogram import Bot

from bot.delivery.budgets import MemoryBudgets, TelegramLimits
from bot.delivery.render import Rendered, render, split
from bot.delivery.scheduler import Scheduler
from bot.delivery.streaming import ChatUnavailableError, Delivered, StreamingReply
from tests.fake_telegram import Call, FakeTelegram
from tests.telegram_harness import make_bot

USER_ID = 1001


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    sched = Scheduler(MemoryBudgets(TelegramLimits()))
    yield sched
    await sched.aclose()


@pytest.fixture
async def bot(tg: FakeTelegram, scheduler: Scheduler) -> AsyncIterator[Bot]:
    async with make_bot(tg, scheduler) as bot:
        yield bot


def user_prompt(tg: FakeTelegram, text: str = "question") -> tuple[int, int]:
    user = tg.add_user(USER_ID, "Ann")
    message = tg.user_message(tg.private_chat(user), user, text)
    return USER_ID, message["message_id"]


async def chunks(parts: Iterable[str], delay: float = 0.0) -> AsyncIterator[str]:
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        yield part


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def stream(
    bot: Bot,
    scheduler: Scheduler,
    tg: FakeTelegram,
    deltas: AsyncIterator[str],
    **kwargs: Any,
) -> tuple[Delivered, int, int]:
    chat_id, reply_to = user_prompt(tg)
    reply = StreamingReply(bot, scheduler, chat_id, reply_to=reply_to, **kwargs)
    return await reply.run(deltas), chat_id, reply_to


def message_calls(tg: FakeTelegram) -> list[Call]:
    return [c for c in tg.calls if c.method in ("sendMessage", "editMessageText")]


def assert_no_rejections(tg: FakeTelegram) -> None:
    rejected = [(c.method, c.description) for c in tg.calls if not c.ok]
    assert rejected == []
    assert tg.too_many_requests == 0


def expected_parts(markdown: str) -> list[Rendered]:
    return split(render(markdown))


def shown(tg: FakeTelegram, chat_id: int) -> list[str]:
    return [m.text for m in tg.bot_messages(chat_id)]


# --- the basic contract -----------------------------------------------------------------


async def test_reply_streams_and_ends_with_the_rendered_answer(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    answer = "**Autumn** leaves _fall_ softly,\ncovering the `path` in gold. 🍂"
    started = time.monotonic()
    delivered, chat_id, reply_to = await stream(
        bot, scheduler, tg, chunks(pieces(answer, 4), delay=0.1)
    )
    elapsed = time.monotonic() - started
    [message] = tg.bot_messages(chat_id)
    final = render(answer)
    assert message.text == final.text
    assert message.reply_to == reply_to
    assert {(e["type"], e["offset"], e["length"]) for e in message.entities} == {
        (e.type, e.offset, e.length) for e in final.entities
    }
    assert delivered.markdown == answer
    assert delivered.message_ids == (message.message_id,)
    assert len(tg.calls_to("editMessageText")) <= math.ceil(elapsed / 1.0) + 2
    assert all(c.params.get("parse_mode") is None for c in message_calls(tg))
    assert_no_rejections(tg)


async def test_typing_is_shown_until_the_first_text(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    async def late() -> AsyncIterator[str]:
        await asyncio.sleep(0.5)
        yield "hello"

    await stream(bot, scheduler, tg, late(), typing_interval=0.1)
    actions = tg.calls_to("sendChatAction")
    assert len(actions) >= 3  # renewed while waiting
    assert all(c.params["action"] == "typing" for c in actions)
    first_send = tg.calls_to("sendMessage")[0].at
    assert all(c.at <= first_send for c in actions)


async def test_fast_stream_is_coalesced(bot: Bot, scheduler: Scheduler, tg: FakeTelegram) -> None:
    words = [f"word{i} " for i in range(300)]  # 100 chunks/s for 3 s
    started = time.monotonic()
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(words, delay=0.01))
    elapsed = time.monotonic() - started
    assert shown(tg, chat_id) == [render("".join(words)).text]
    assert len(message_calls(tg)) <= math.ceil(elapsed / 1.0) + 2
    assert_no_rejections(tg)


async def test_slow_stream_shows_every_chunk(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    parts = ["One.", " Two.", " Three."]
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(parts, delay=3.0))
    [message] = tg.bot_messages(chat_id)
    assert message.history == ["One.", "One. Two.", "One. Two. Three."]
    assert_no_rejections(tg)


async def test_no_edit_when_what_telegram_stores_is_unchanged(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    # Trailing spaces/newlines are trimmed by Telegram: these deltas change nothing visible.
    parts = ["Hello", " ", "\n", "\n\n", "  ", " world", "\n"]
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(parts, delay=0.3))
    [message] = tg.bot_messages(chat_id)
    assert message.text == render("".join(parts)).text
    assert len(message.history) == len(set(message.history))  # every edit changed something
    assert_no_rejections(tg)


async def test_empty_answer_is_replaced_by_a_notice(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    delivered, chat_id, _ = await stream(
        bot, scheduler, tg, chunks(["", "  ", "\n"]), empty_notice="(nothing)"
    )
    assert shown(tg, chat_id) == ["(nothing)"]
    assert delivered.markdown.strip() == ""
    assert_no_rejections(tg)


async def test_markdown_half_written_then_completed(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    parts = ["Here is **bo", "ld** text and a ```py\nprint(1)", "\n```\nend"]
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(parts, delay=1.1))
    [message] = tg.bot_messages(chat_id)
    final = render("".join(parts))
    assert message.text == final.text
    assert {e["type"] for e in message.entities} >= {"bold", "pre"}
    assert_no_rejections(tg)


# --- Telegram errors ---------------------------------------------------------------------


async def test_rejected_entities_fall_back_to_plain_text(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    tg.fail_next("sendMessage", error_code=400, description="Bad Request: can't parse entities: x")
    tg.fail_next("editMessageText", error_code=400, description="Bad Request: can't parse entities")
    answer = "**bold** start, then more text"
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(pieces(answer, 8), delay=0.4))
    [message] = tg.bot_messages(chat_id)
    assert message.text == render(answer).text  # the text is never lost
    assert message.entities == []


async def test_429_on_edit_then_newest_text(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    tg.fail_next(
        "editMessageText",
        error_code=429,
        description="Too Many Requests: retry after 2",
        retry_after=2,
    )
    parts = [f"part {i}. " for i in range(12)]
    started = time.monotonic()
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(parts, delay=0.25))
    assert shown(tg, chat_id) == [render("".join(parts)).text]
    edits = tg.calls_to("editMessageText")
    rejected = [c for c in edits if not c.ok]
    assert len(rejected) == 1
    after = [c for c in edits if c.ok and c.at > rejected[0].at]
    assert after
    assert after[0].at - rejected[0].at >= 2.0
    assert time.monotonic() - started < 8


async def test_stream_ends_while_a_429_wait_is_pending(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    tg.fail_next(
        "editMessageText",
        error_code=429,
        description="Too Many Requests: retry after 3",
        retry_after=3,
    )
    parts = ["first words", " and the rest of the answer", " — the end."]
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks(parts, delay=1.2))
    assert shown(tg, chat_id) == [render("".join(parts)).text]  # the final text arrived


async def test_deleted_reply_continues_in_a_new_message(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    async def deltas() -> AsyncIterator[str]:
        yield "The beginning"
        await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
        await asyncio.sleep(0.2)
        for message in tg.bot_messages(USER_ID):
            tg.delete_message(USER_ID, message.message_id)
        yield " and the end."

    delivered, chat_id, _ = await stream(bot, scheduler, tg, deltas())
    assert shown(tg, chat_id) == ["The beginning and the end."]
    assert len(delivered.message_ids) == 1


async def test_blocked_chat_raises_chat_unavailable(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    tg.block_chat(USER_ID)
    with pytest.raises(ChatUnavailableError):
        await stream(bot, scheduler, tg, chunks(["hi"]))


async def test_migrated_group_gets_the_unfinished_part_anew(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    ann = tg.add_user(USER_ID, "Ann")
    group = tg.group_chat(-4001, "Team", supergroup=False)
    question = tg.user_message(group, ann, "question")
    answer = "\n\n".join(["word " * 200] * 6) + "\n\nthe end."  # two parts

    async def deltas() -> AsyncIterator[str]:
        for piece in pieces(answer[:5000], 500):  # the first part is full, the second begun
            yield piece
            await asyncio.sleep(0.05)
        await tg.wait_for(lambda: len(tg.bot_messages(-4001)) == 2)
        tg.migrate_group(-4001, -1004001, service_messages=False)
        yield answer[5000:]

    reply = StreamingReply(bot, scheduler, -4001, reply_to=question["message_id"])
    delivered = await reply.run(deltas())
    first, second = expected_parts(answer)
    old = tg.bot_messages(-4001)
    assert [m.text for m in old] == [first.text, second.text[: len(old[1].text)]]
    [continued] = tg.bot_messages(-1004001)  # the whole unfinished part, the full one stays
    assert continued.text == second.text
    assert continued.reply_to is None
    assert delivered.chat_id == -1004001
    assert delivered.message_ids == (old[0].message_id, continued.message_id)
    assert delivered.visible == f"{first.text}\n{second.text}"
    assert [c.error_code for c in tg.calls if not c.ok] == [400]


async def test_stop_ends_with_the_suffix_and_closes_the_stream(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            yield "Thinking"
            while True:
                await asyncio.sleep(0.1)
                yield "."
        finally:
            closed.set()

    chat_id, reply_to = user_prompt(tg)
    reply = StreamingReply(bot, scheduler, chat_id, reply_to=reply_to)
    task = asyncio.create_task(reply.run(endless()))
    await asyncio.sleep(1.0)
    reply.stop("\n\n_stopped_")
    delivered = await asyncio.wait_for(task, 10)
    assert closed.is_set()
    assert delivered.stopped
    assert delivered.markdown.endswith("\n\n_stopped_")
    assert shown(tg, chat_id) == [render(delivered.markdown).text]
    assert shown(tg, chat_id)[0].endswith("stopped")


# --- long answers ------------------------------------------------------------------------


@pytest.mark.parametrize("filler", ["word ", "🍂🍁 ", "日本語の文 "])
async def test_long_answer_is_split_and_full_parts_are_not_edited_again(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram, filler: str
) -> None:
    paragraph = filler * 200
    answer = "\n\n".join([paragraph] * 12)  # well over 3 × 4096 UTF-16 units
    _delivered, chat_id, reply_to = await stream(
        bot, scheduler, tg, chunks(pieces(answer, 700), delay=0.05)
    )
    messages = tg.bot_messages(chat_id)
    assert [m.text for m in messages] == [p.text for p in expected_parts(answer)]
    assert len(messages) >= 3
    assert messages[0].reply_to == reply_to
    # once a later part exists, an earlier one is edited at most once (to its final form)
    for earlier, later in itertools.pairwise(messages):
        created = next(
            c.at
            for c in tg.calls_to("sendMessage")
            if c.ok and c.params["text"].strip() == later.history[0]
        )
        edits_after = [
            c
            for c in tg.calls_to("editMessageText")
            if c.ok and c.params["message_id"] == earlier.message_id and c.at > created
        ]
        assert len(edits_after) <= 1
    assert_no_rejections(tg)


async def test_formatting_crossing_a_split_is_reopened(
    bot: Bot, scheduler: Scheduler, tg: FakeTelegram
) -> None:
    answer = "**" + ("bold words " * 700).strip() + "**"
    _delivered, chat_id, _ = await stream(bot, scheduler, tg, chunks([answer]))
    messages = tg.bot_messages(chat_id)
    assert len(messages) == 2
    for message in messages:
        assert [e["type"] for e in message.entities] == ["bold"]
    assert_no_rejections(tg)


# --- timing under the real limits ----------------------------------------------------------


@pytest.mark.parametrize("seconds", [10, 30])
async def test_long_stream_has_no_429_and_bounded_edits(seconds: int) -> None:
    scale = 0.25  # Telegram's clock 4× faster on both sides: the same limits, sooner
    per_second = 20
    words = [f"w{i} " for i in range(seconds * per_second)]
    scheduler = Scheduler(MemoryBudgets(TelegramLimits(time_scale=scale)))
    async with FakeTelegram(time_scale=scale) as tg, make_bot(tg, scheduler) as bot:
        started = time.monotonic()
        deltas = chunks(words, delay=scale / per_second)
        _delivered, chat_id, _ = await stream(bot, scheduler, tg, deltas)
        elapsed = (time.monotonic() - started) / scale  # Telegram seconds
        calls = message_calls(tg)
        assert shown(tg, chat_id) == [p.text for p in expected_parts("".join(words))]
        assert len(tg.calls_to("editMessageText")) <= math.ceil(elapsed / 1.0) + 2
        assert_no_rejections(tg)
    await scheduler.aclose()
    print(f"{seconds} s stream: {len(calls)} send/edit calls in {elapsed:.1f} s, 0 × 429")
