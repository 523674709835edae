"""Who may chat (ALLOWED_USER_IDS) and how often (USER_RATE_LIMIT), end to end."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from bot.storage.keys import Keys
from bot.storage.user_limits import RedisUserLimits, Verdict
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

BOT_NAME = "@gptalk_test_bot"


def mention(text: str) -> dict[str, Any]:
    """Keyword arguments of a group message that @mentions the bot."""
    return {
        "text": f"{BOT_NAME} {text}",
        "entities": [{"type": "mention", "offset": 0, "length": len(BOT_NAME)}],
    }


def api_calls(tg: FakeTelegram) -> list[str]:
    """Methods the bot called, long polling aside."""
    return [c.method for c in tg.calls if c.method != "getUpdates"]


def answered(harness: BotHarness, question: dict[str, Any]) -> bool:
    return harness.answer(question) == render(harness.gptalk.answer).text


# --- ALLOWED_USER_IDS --------------------------------------------------------------------------


async def test_a_user_not_on_the_list_is_refused_in_private(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(allowed_user_ids=frozenset({2}))
    eve, ann = harness.user(3, "Eve"), harness.user(2, "Ann")
    for text in ("hello", "/start", "/retry"):
        harness.say(eve, text)
        await harness.settle()
    refusals = [m.text for m in tg.bot_messages(eve["id"])]
    assert len(refusals) == 3
    assert all(len(text) < 100 for text in refusals)
    assert fake_gptalk.submits == 0
    assert fake_gptalk.logins == 0
    assert tg.calls_to("sendChatAction") == []

    question = harness.say(ann, "hello")
    await harness.settle()
    assert answered(harness, question)
    assert fake_gptalk.submits == 1


async def test_a_user_not_on_the_list_is_ignored_in_groups(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(allowed_user_ids=frozenset({2}))
    eve, ann = harness.user(3, "Eve"), harness.user(2, "Ann")
    group = tg.group_chat(-100, "Team")
    harness.say(ann, chat=group, **mention("hi"))
    await harness.settle()
    [answer] = tg.bot_messages(group["id"])
    calls_before = len(api_calls(tg))

    harness.say(eve, chat=group, **mention("hello"))
    harness.say(eve, "/ask hello", chat=group)
    harness.say(eve, "a reply", chat=group, reply_to=answer.message_id)
    harness.say(eve, "/new", chat=group)
    await harness.settle()
    assert api_calls(tg)[calls_before:] == []
    assert fake_gptalk.submits == 1


async def test_messages_on_behalf_of_a_chat_are_ignored_when_the_list_is_set(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(allowed_user_ids=frozenset({2}), admin_ids=frozenset({1}))
    group = tg.group_chat(-100, "Team")
    anonymous = tg.add_user(1087968824, "Group", username="GroupAnonymousBot", is_bot=True)
    calls_before = len(api_calls(tg))
    harness.say(anonymous, chat=group, sender_chat=group, **mention("hello"))
    await harness.settle()
    assert api_calls(tg)[calls_before:] == []
    assert fake_gptalk.submits == 0


async def test_an_admin_not_on_the_list_can_still_chat(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(allowed_user_ids=frozenset({2}), admin_ids=frozenset({1}))
    root = harness.user(1, "Root")
    question = harness.say(root, "hello")
    await harness.settle()
    assert answered(harness, question)
    group = tg.group_chat(-100, "Team")
    in_group = harness.say(root, chat=group, **mention("hello"))
    await harness.settle()
    assert answered(harness, in_group)
    assert fake_gptalk.submits == 2


# --- USER_RATE_LIMIT ---------------------------------------------------------------------------


async def test_a_flood_gets_one_notice_and_does_not_hold_up_others(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "Counting slowly: " + "one two three " * 8
    fake_gptalk.chunk_size, fake_gptalk.delay = 12, 0.1  # ~1 s per answer
    harness = await make_bot(user_rate_limit=3)
    ann, bob = harness.user(2, "Ann"), harness.user(3, "Bob")
    flood = [harness.say(ann, f"question {i}") for i in range(30)]
    started = time.monotonic()
    other = harness.say(bob, "just one question")
    await tg.wait_for(lambda: answered(harness, other), timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert not answered(harness, flood[2])  # Bob did not wait behind Ann's answers

    await harness.settle(within=60)
    assert fake_gptalk.submits == 4  # 3 of Ann's, 1 of Bob's
    assert all(answered(harness, q) for q in flood[:3])
    [notice] = harness.replies(flood[3])
    assert len(notice) < 120
    assert [harness.replies(q) for q in flood[4:]] == [[]] * 26
    assert len(tg.bot_messages(ann["id"])) == 4  # 3 answers + 1 notice, not 27
    assert tg.too_many_requests == 0


async def test_no_limit_when_it_is_off(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "Fine."
    harness = await make_bot(user_rate_limit=0)
    ann = harness.user(2, "Ann")
    questions = [harness.say(ann, f"question {i}") for i in range(4)]  # 1 running + 3 waiting
    await harness.settle()
    assert [harness.replies(q) for q in questions] == [["Fine."]] * 4
    assert fake_gptalk.submits == 4


async def test_admins_are_never_rate_limited(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "Fine."
    harness = await make_bot(user_rate_limit=1, admin_ids=frozenset({1}))
    root, eve = harness.user(1, "Root"), harness.user(2, "Eve")
    mine = [harness.say(root, f"question {i}") for i in range(4)]
    theirs = [harness.say(eve, f"question {i}") for i in range(2)]
    await harness.settle()
    assert [harness.replies(q) for q in mine] == [["Fine."]] * 4
    assert harness.replies(theirs[0]) == ["Fine."]
    [notice] = harness.replies(theirs[1])
    assert notice != "Fine."
    assert fake_gptalk.submits == 5


async def test_the_limit_is_shared_across_processes(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await make_bot(user_rate_limit=2)
    ann, bob = harness.user(2, "Ann"), harness.user(3, "Bob")
    elsewhere = RedisUserLimits(redis, Keys("gptalk"), 2)  # another process, same Redis
    assert (await elsewhere.hit(ann["id"])).verdict is Verdict.ALLOW
    assert (await elsewhere.hit(ann["id"])).verdict is Verdict.ALLOW
    refused = harness.say(ann, "hello")
    await harness.settle()
    [notice] = harness.replies(refused)
    assert notice != render(fake_gptalk.answer).text
    assert fake_gptalk.submits == 0

    question = harness.say(bob, "hello")
    await harness.settle()
    assert answered(harness, question)
    assert await redis.zcard(f"gptalk:ratelimit:{bob['id']}") == 1
    assert (await elsewhere.hit(bob["id"])).verdict is Verdict.ALLOW
    assert (await elsewhere.hit(bob["id"])).verdict is Verdict.NOTIFY


async def test_a_slow_down_notice_does_not_hold_up_the_group(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    """The notice to a flooding user goes out after the conversation's gate: while it
    waits for the group's budget, another member's prompt goes on to the model."""
    harness = await make_bot(user_rate_limit=1)
    group = tg.group_chat(-100555, "Club")
    ann, bob = harness.user(2, "Ann"), harness.user(3, "Bob")
    harness.say(ann, chat=group, **mention("one"))
    await harness.settle()
    # Telegram holds the group for 8 s after the notice's first try: the notice waits
    # (and is dropped after a few seconds), Bob's prompt must not.
    tg.fail_next(
        "sendMessage",
        error_code=429,
        description="Too Many Requests: retry after 8",
        retry_after=8,
    )
    harness.say(ann, chat=group, **mention("two"))
    await tg.wait_for(lambda: tg.injected_errors == 1, timeout=5)
    harness.say(bob, chat=group, **mention("bob here"))
    await tg.wait_for(lambda: fake_gptalk.submits == 2, timeout=3)
    assert "Bob: bob here" in fake_gptalk.prompts[-1]


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_anonymous_admins_are_limited_per_chat_they_speak_for(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    redis_url: str,
    store: str,
) -> None:
    # Every anonymous admin's message comes from the same service account
    # (GroupAnonymousBot); the group it is sent on behalf of is the sender that counts.
    fake_gptalk.answer = "Fine."
    harness = await make_bot(user_rate_limit=2, redis_url=redis_url if store == "redis" else None)
    anonymous = tg.add_user(1087968824, "Group", username="GroupAnonymousBot", is_bot=True)
    books, chess = tg.group_chat(-100111, "Book club"), tg.group_chat(-100222, "Chess club")
    ann = harness.user(2, "Ann")

    flood = [
        harness.say(anonymous, chat=books, sender_chat=books, **mention(f"news {i}"))
        for i in range(6)
    ]
    await harness.settle()
    assert [answered(harness, q) for q in flood[:2]] == [True, True]
    [notice] = harness.replies(flood[2])
    assert notice != "Fine."
    assert len(notice) < 120
    assert [harness.replies(q) for q in flood[3:]] == [[]] * 3  # one notice per flood

    elsewhere = [
        harness.say(anonymous, chat=chess, sender_chat=chess, **mention(f"move {i}"))
        for i in range(2)
    ]
    member = harness.say(ann, chat=books, **mention("and me?"))
    await harness.settle()
    assert all(answered(harness, q) for q in elsewhere)  # another group's admin: own bucket
    assert answered(harness, member)  # a member of the flooded group is unaffected
    assert fake_gptalk.submits == 5
    if store == "memory":
        return
    assert await redis.zcard(f"gptalk:ratelimit:{books['id']}") == 2
    assert await redis.zcard(f"gptalk:ratelimit:{chess['id']}") == 2
    assert await redis.exists(f"gptalk:ratelimit:{anonymous['id']}") == 0
