"""Odd and hostile input end to end: empty, huge, non-text, edited, from bots and chats,
from long ago, and invalid configuration. Whatever it is, the bot answers politely or
stays silent, and nothing reaches GPTalk that should not."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.delivery.render import render
from tests.bot_process import bot_env, start_bot
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

BOT = "@gptalk_test_bot"  # the fake's default bot username
MEDIA = ("sticker", "photo", "voice", "document")

Json = dict[str, Any]


def mention(text: str) -> Json:
    """Keyword arguments of a message that starts with an @mention of the bot."""
    return {
        "text": f"{BOT} {text}".rstrip(),
        "entities": [{"type": "mention", "offset": 0, "length": len(BOT)}],
    }


def api_calls(tg: FakeTelegram, since: int = 0) -> list[str]:
    """Methods the bot called after ``tg.calls[since]``, long polling aside."""
    return [c.method for c in tg.calls[since:] if c.method != "getUpdates"]


def texts(tg: FakeTelegram, chat_id: int) -> list[str]:
    return [m.text for m in tg.bot_messages(chat_id)]


# --- empty and oversized text ------------------------------------------------------------------


async def test_empty_or_blank_text_in_private_gets_a_polite_reply(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    for blank in ("   ", "\n\t \n"):
        harness.say(ann, blank)
        await harness.settle()
    replies = texts(tg, ann["id"])
    assert len(replies) == 2
    assert all("empty" in reply.lower() for reply in replies)
    assert fake_gptalk.submits == 0
    assert tg.calls_to("sendChatAction") == []


async def test_a_group_message_that_is_only_the_mention_gets_a_hint(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    group = tg.group_chat(-100, "Team")
    question = harness.say(harness.user(1, "Ann"), chat=group, **mention(""))
    await harness.settle()
    [hint] = harness.replies(question)
    assert "question" in hint.lower()
    assert fake_gptalk.submits == 0


async def test_a_4096_character_prompt_reaches_gptalk_intact(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    unit = 'Привет, "мир" <b>*не жирный*</b> _x_ \\ `код` & '
    text = (unit * (4096 // len(unit) + 1))[:4095] + "?"
    assert len(text) == len(text.encode("utf-16-le")) // 2 == 4096  # Telegram's maximum
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    question = harness.say(ann, text)
    await harness.settle()
    assert fake_gptalk.prompts == [text]
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_a_history_over_the_budget_drops_the_oldest_turns(
    make_bot: BotFactory, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    budget = 2000
    harness = await make_bot(system_prompt="Be brief.", prompt_max_chars=budget)
    ann = harness.user(1, "Ann")
    old_turns: list[Json] = []
    for i in range(10):  # about 8000 characters of history
        old_turns.append({"role": "user", "content": f"question {i} " + "q" * 190})
        old_turns.append({"role": "assistant", "content": f"answer {i} " + "a" * 190})
    key = f"gptalk:history:{ann['id']}"
    await redis.rpush(key, *[json.dumps(turn) for turn in old_turns])

    harness.say(ann, "the newest question")
    await harness.settle()
    [prompt] = fake_gptalk.prompts
    assert len(prompt) <= budget
    assert prompt.startswith("System: Be brief.\nUser: question ")  # a turn starts with the user
    assert prompt.endswith("User: the newest question\nAssistant:")
    assert "question 0 " not in prompt  # the oldest went first
    assert "question 9 " in prompt
    assert f"answer 9 {'a' * 190}\nUser: the newest question" in prompt  # turns are whole
    kept = [i for i in range(10) if f"question {i} " in prompt]
    assert kept == list(range(kept[0], 10))  # a contiguous newest part of the history


# --- non-text messages -------------------------------------------------------------------------


async def test_media_without_caption_in_private_gets_a_text_only_reply(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    for kind in MEDIA:
        media: Json = {kind: True}
        harness.say(ann, **media)
    await harness.settle()
    replies = texts(tg, ann["id"])
    assert len(replies) == len(MEDIA)
    assert all("text" in reply.lower() for reply in replies)
    assert fake_gptalk.submits == 0
    assert tg.calls_to("sendChatAction") == []


async def test_media_in_groups_is_ignored_unless_it_replies_to_the_bot(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    group = tg.group_chat(-100, "Team")
    harness.say(ann, chat=group, **mention("hello"))
    await harness.settle()
    [answer] = tg.bot_messages(group["id"])
    mark = len(tg.calls)

    for kind in MEDIA:
        media: Json = {kind: True}
        harness.say(ann, chat=group, **media)
    await harness.settle()
    assert api_calls(tg, mark) == []

    sticker = harness.say(ann, chat=group, sticker=True, reply_to=answer.message_id)
    await harness.settle()
    [hint] = harness.replies(sticker)
    assert "text" in hint.lower()
    assert fake_gptalk.submits == 1


# --- edited messages ---------------------------------------------------------------------------


async def test_edits_of_older_messages_and_chatter_are_ignored(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    """Editing one's last question regenerates its answer (tests/test_bot_edits.py);
    editing an older question, or group chatter not addressed to the bot, costs nothing."""
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    older = harness.say(ann, "first question")
    await harness.settle()
    harness.say(ann, "second question")
    await harness.settle()
    group = tg.group_chat(-100, "Team")
    chatter = harness.say(ann, "just chatting", chat=group)
    await harness.settle()
    mark, submits = len(tg.calls), fake_gptalk.submits

    tg.edited_message(tg.private_chat(ann), ann, older["message_id"], "first, edited")
    tg.edited_message(group, ann, chatter["message_id"], "still just chatting")
    queued = [u["update_id"] for u in tg.pending_updates if "edited_message" in u]
    assert len(queued) == 2
    await tg.wait_for(lambda: set(queued) <= harness.tracker.done, timeout=10)
    await asyncio.sleep(0.3)
    assert api_calls(tg, mark) == []
    assert fake_gptalk.submits == submits


# --- bots, channels, anonymous admins ----------------------------------------------------------


async def test_other_bots_are_ignored_without_any_api_call(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    robot = tg.add_user(777, "Robo", username="robo_bot", is_bot=True)
    group = tg.group_chat(-100, "Team")
    harness.say(ann, chat=group, **mention("hello"))
    await harness.settle()
    [answer] = tg.bot_messages(group["id"])
    mark = len(tg.calls)

    harness.say(robot, chat=group, **mention("answer me"))
    harness.say(robot, "a reply to you", chat=group, reply_to=answer.message_id)
    harness.say(robot, "/ask what now", chat=group)
    harness.say(robot, "/reset_token", chat=group)
    harness.say(robot, "hello in private")
    await harness.settle()
    assert api_calls(tg, mark) == []
    assert fake_gptalk.submits == 1


async def test_channels_and_anonymous_admins_speak_as_their_chat(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot()
    group = tg.group_chat(-100, "Team")
    channel = {"id": -100555, "type": "channel", "title": "News"}
    channel_bot = tg.add_user(136817688, "Channel", username="Channel_Bot", is_bot=True)
    anonymous = tg.add_user(1087968824, "Group", username="GroupAnonymousBot", is_bot=True)
    mark = len(tg.calls)

    harness.say(channel_bot, "news of the day", chat=group, sender_chat=channel)
    harness.say(anonymous, "admin notice", chat=group, sender_chat=group)
    await harness.settle()
    assert api_calls(tg, mark) == []  # not addressed to the bot: nothing at all

    from_channel = harness.say(channel_bot, chat=group, sender_chat=channel, **mention("hi"))
    await harness.settle()
    from_admin = harness.say(anonymous, chat=group, sender_chat=group, **mention("hello"))
    await harness.settle()
    expected = render(fake_gptalk.answer).text
    assert harness.answer(from_channel) == expected
    assert harness.answer(from_admin) == expected
    first, second = fake_gptalk.prompts
    assert first == "News: hi"  # named after the chat, never "Channel" or "Group"
    assert second.endswith("User: Anonymous admin: hello\nAssistant:")


# --- a backlog after downtime ------------------------------------------------------------------


async def test_an_old_backlog_is_skipped_with_one_notice_per_private_chat(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    now = int(time.time())
    hour_ago, minutes_ago = now - 3600, now - 120
    ann, bob = tg.add_user(1, "Ann"), tg.add_user(2, "Bob")
    group = tg.group_chat(-100, "Team")
    # Sent while the bot was down: queued before it starts.
    for text in ("are you there?", "hello??", "/reset_token", "/new"):
        tg.user_message(tg.private_chat(ann), ann, text, date=hour_ago)
    for text in ("question one", "question two"):
        tg.user_message(tg.private_chat(bob), bob, text, date=hour_ago + 60)
    recent = tg.user_message(tg.private_chat(bob), bob, "a recent question", date=minutes_ago)
    for text in ("old mention", "another"):
        tg.user_message(group, ann, date=hour_ago, **mention(text))
    backlog = {u["update_id"] for u in tg.pending_updates}

    harness = await make_bot(admin_ids=frozenset({ann["id"]}))
    await tg.wait_for(lambda: backlog <= harness.tracker.done, timeout=30)
    await tg.wait_for(lambda: harness.answer(recent) != "", timeout=30)
    assert not harness.tracker.errors

    [notice] = texts(tg, ann["id"])  # no "token reset", no "new conversation" either
    assert "offline" in notice.lower()
    bob_texts = texts(tg, bob["id"])
    assert len(bob_texts) == 2
    assert sum("offline" in text.lower() for text in bob_texts) == 1
    assert harness.answer(recent) == render(fake_gptalk.answer).text  # not stale: answered
    assert fake_gptalk.prompts == ["a recent question"]
    assert [c for c in tg.calls if c.params.get("chat_id") == group["id"]] == []

    question = harness.say(ann, "now I'm back")  # fresh messages are answered as usual
    await harness.settle()
    assert harness.answer(question) == render(fake_gptalk.answer).text


# --- invalid configuration ---------------------------------------------------------------------


INVALID: list[tuple[dict[str, str], list[str]]] = [
    ({"REDIS_URL": "localhost:6379"}, ["REDIS_URL"]),
    ({"GPTALK_READ_TIMEOUT": "nan"}, ["GPTALK_READ_TIMEOUT"]),
    (  # several at once: all named, in one line
        {"PROMPT_MAX_CHARS": "10", "LOG_LEVEL": "loud", "REDIS_PREFIX": "my bot"},
        ["PROMPT_MAX_CHARS", "LOG_LEVEL", "REDIS_PREFIX"],
    ),
]


async def run_bot(env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    proc = await start_bot(env, cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, (out + err).decode()


async def test_invalid_configuration_names_the_variable_and_exits_2(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path
) -> None:
    base = bot_env(tg, fake_gptalk)
    # Side by side: each run is mostly Python's start-up.
    results = await asyncio.gather(
        *(run_bot({**base, **settings}, tmp_path) for settings, _ in INVALID)
    )
    for (settings, named), (code, output) in zip(INVALID, results, strict=True):
        assert code == 2, (settings, output)
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1, (settings, lines)
        for variable in named:
            assert variable in lines[0], (settings, lines[0])
        assert tg.token.split(":", 1)[1] not in lines[0]
    assert tg.calls == []  # it stopped before talking to anyone
