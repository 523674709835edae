"""Groups and supergroups end to end: real dispatcher and Redis, fake Bot API and GPTalk.

In groups the bot answers only what is addressed to it (a mention by entities, a reply to
one of its messages, ``/ask``); everything else costs no API call at all. Conversations are
per chat, or per forum topic; user turns carry the speaker's first name.

Telegram's clock runs ten times faster here (``time_scale``): a group's 60 s window lasts
6 real seconds, so the pacing tests can fill it without taking minutes. The bot runs with
the same scale, as it must (``retry_after`` and the windows are in fake seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.budgets import TelegramLimits
from bot.delivery.render import render
from bot.i18n import EN, RU
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import BAD_GATEWAY_HTML, PARTICIPANT_ID_INVALID, FakeTelegram

SCALE = 0.1  # fake seconds = real seconds / SCALE
BOT = "@gptalk_test_bot"  # the fake's default bot username
GROUP_ID = -100123
FORUM_ID = -100777
ANONYMOUS_ADMIN_ID = 1087968824  # Telegram's GroupAnonymousBot
NAMES = ["Ann", "Bob", "Cid", "Dee", "Eve"]

Json = dict[str, Any]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """The fake Bot API with a clock ten times faster than real time."""
    async with FakeTelegram(time_scale=SCALE) as fake:
        yield fake


async def start(make_bot: BotFactory, **settings: Any) -> BotHarness:
    """The bot, with its limiter on the fake's clock."""
    limits = TelegramLimits(time_scale=SCALE, group_edit_interval=3.0, edit_interval=1.0)
    return await make_bot(limits=limits, **settings)


# --- helpers ----------------------------------------------------------------------------------


def u16(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts offsets."""
    return len(text.encode("utf-16-le")) // 2


def entity(text: str, part: str, kind: str = "mention", **extra: Any) -> Json:
    """The entity covering the first occurrence of ``part`` in ``text``."""
    index = text.index(part)
    return {"type": kind, "offset": u16(text[:index]), "length": u16(part), **extra}


def command(text: str) -> list[Json]:
    """The ``bot_command`` entity Telegram puts on a leading command."""
    return [entity(text, text.split()[0], "bot_command")]


def mentioning(harness: BotHarness, chat: Json, user: Json, text: str, **kwargs: Any) -> Json:
    """``user`` writes ``text`` in ``chat`` with a mention entity on the bot's handle."""
    handle = next(word for word in text.split() if word.lower().startswith(BOT))
    handle = handle[: len(BOT)]
    return harness.say(user, text, chat=chat, entities=[entity(text, handle)], **kwargs)


def api_calls_since(tg: FakeTelegram, mark: int) -> list[str]:
    """Methods called after ``mark`` (an index into ``tg.calls``), long polls aside."""
    return [call.method for call in tg.calls[mark:] if call.method != "getUpdates"]


def no_rejections(tg: FakeTelegram) -> None:
    assert [(c.method, c.description) for c in tg.calls if not c.ok] == []
    assert tg.too_many_requests == 0


async def stored(redis: aioredis.Redis, key: str) -> list[Json]:
    return [json.loads(item) for item in await redis.lrange(key, 0, -1)]


def history_key(chat_id: int, thread_id: int | None = None) -> str:
    return f"gptalk:history:{chat_id}" + ("" if thread_id is None else f":{thread_id}")


def last_turn(prompt: str) -> str:
    """The last user turn of a prompt as GPTalk receives it."""
    return prompt.removesuffix("\nAssistant:").rsplit("\nUser: ", 1)[-1]


def sent_threads(tg: FakeTelegram, chat_id: int) -> set[int | None]:
    return {call.params.get("message_thread_id") for call in tg.calls_to("sendMessage", chat_id)}


# --- what is ignored --------------------------------------------------------------------------


def _plain_chatter(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    harness.say(ann, "good morning everyone", chat=group)
    harness.say(bob, "has anyone tried gptalk_test_bot yet?", chat=group)


def _mention_of_another_user(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    text = "@bob_smith what do you think?"
    harness.say(ann, text, chat=group, entities=[entity(text, "@bob_smith")])
    text = "Bob Smith, lunch?"
    mention = entity(text, "Bob Smith", "text_mention", user=bob)
    harness.say(ann, text, chat=group, entities=[mention])


def _mention_of_another_bot(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    # Starts with our handle: only a substring match would take it for us.
    text = "@gptalk_test_bot_helper translate this"
    harness.say(ann, text, chat=group, entities=[entity(text, "@gptalk_test_bot_helper")])
    text = "🎃 @other_bot tell a joke"
    harness.say(bob, text, chat=group, entities=[entity(text, "@other_bot")])


def _reply_to_another_user(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    question = harness.say(bob, "Is the moon made of cheese?", chat=group)
    harness.say(ann, "No, it is not.", chat=group, reply_to=question["message_id"])


def _commands_for_others(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    for text in ("/new@otherbot", "/ask@otherbot what is love", "/frobnicate", "/stop@otherbot"):
        harness.say(ann, text, chat=group, entities=command(text))


def _media(harness: BotHarness, group: Json, ann: Json, bob: Json) -> None:
    harness.say(ann, None, chat=group, sticker=True)
    harness.say(bob, None, chat=group, photo=True)
    harness.say(bob, None, chat=group, photo=True, caption="my cat")


IGNORED: dict[str, Callable[[BotHarness, Json, Json, Json], None]] = {
    "plain chatter": _plain_chatter,
    "mention of another user": _mention_of_another_user,
    "mention of another bot": _mention_of_another_bot,
    "reply to another user": _reply_to_another_user,
    "commands for another bot": _commands_for_others,
    "media not for the bot": _media,
}


@pytest.mark.parametrize("case", list(IGNORED), ids=list(IGNORED))
async def test_messages_not_for_the_bot_cost_no_api_call(
    case: str,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    mark = len(tg.calls)
    IGNORED[case](harness, group, ann, bob)
    await harness.settle()
    await asyncio.sleep(0.2)  # nothing trickles in afterwards either
    assert api_calls_since(tg, mark) == []
    assert fake_gptalk.submits == 0
    assert await redis.keys("gptalk:history:*") == []


async def test_user_not_allowed_is_ignored_in_groups(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot, allowed_user_ids=frozenset({1}))
    group = tg.group_chat(GROUP_ID, "Book club")
    mark = len(tg.calls)
    mentioning(harness, group, harness.user(2, "Mallory"), f"{BOT} hello")
    await harness.settle()
    assert api_calls_since(tg, mark) == []
    assert fake_gptalk.submits == 0


# --- what is answered -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "handle", "prompt"),
    [
        (f"{BOT} what rhymes with moon?", BOT, "what rhymes with moon?"),
        (f"{BOT}, what rhymes with moon?", BOT, "what rhymes with moon?"),
        ("🍂 Tell me @GPTalk_Test_Bot what rhymes with moon?", "@GPTalk_Test_Bot",
         "🍂 Tell me what rhymes with moon?"),
        ("👩‍👩‍👧 what rhymes with moon? @gptalk_test_bot", BOT,
         "👩‍👩‍👧 what rhymes with moon?"),
    ],
    ids=["at the start", "with a comma", "mid-text after an emoji, any case", "at the end"],
)  # fmt: skip
async def test_mention_is_answered_and_stripped(
    text: str,
    handle: str,
    prompt: str,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    question = harness.say(
        harness.user(1, "Ann"), text, chat=group, entities=[entity(text, handle)]
    )
    await harness.settle()
    assert fake_gptalk.prompts == [f"Ann: {prompt}"]
    [reply] = tg.bot_messages(GROUP_ID)
    assert reply.reply_to == question["message_id"]
    assert reply.text == render(fake_gptalk.answer).text
    assert tg.calls_to("sendChatAction", GROUP_ID)[0].params["action"] == "typing"
    no_rejections(tg)


async def test_text_mention_of_the_bot_is_answered(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    text = "GPTalk Test Bot explain the tides"
    mention = entity(text, "GPTalk Test Bot", "text_mention", user=tg.bot_user)
    question = harness.say(harness.user(1, "Ann"), text, chat=group, entities=[mention])
    await harness.settle()
    assert fake_gptalk.prompts == ["Ann: explain the tides"]
    assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_reply_to_the_bot_continues_the_conversation(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = lambda prompt: f"About {last_turn(prompt)}"
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club", supergroup=False)
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    mentioning(harness, group, ann, f"{BOT} autumn")
    await harness.settle()
    [answer] = tg.bot_messages(GROUP_ID)
    follow_up = harness.say(bob, "and winter?", chat=group, reply_to=answer.message_id)
    await harness.settle()
    assert fake_gptalk.prompts == [
        "Ann: autumn",
        "User: Ann: autumn\nAssistant: About Ann: autumn\nUser: Bob: and winter?\nAssistant:",
    ]  # the bot's own message is history, not quoted again
    assert harness.answer(follow_up) == "About Bob: and winter?"
    assert await stored(redis, history_key(GROUP_ID)) == [
        {"role": "user", "content": "Ann: autumn", "asker": 1},
        {"role": "assistant", "content": "About Ann: autumn", "asker": 1},
        {"role": "user", "content": "Bob: and winter?", "asker": 2},
        {"role": "assistant", "content": "About Bob: and winter?", "asker": 2},
    ]
    no_rejections(tg)


async def test_speakers_are_named_in_the_prompt(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "Noted."
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    mentioning(harness, group, harness.user(1, "Ann"), f"{BOT} I like tea")
    await harness.settle()
    mentioning(harness, group, harness.user(2, "Bob"), f"I prefer coffee {BOT} what do we like?")
    await harness.settle()
    assert fake_gptalk.prompts[-1] == (
        "User: Ann: I like tea\nAssistant: Noted.\n"
        "User: Bob: I prefer coffee what do we like?\nAssistant:"
    )


async def test_mention_replying_to_someone_quotes_their_message(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    claim = harness.say(bob, "The moon is made of cheese.\nTrust me.", chat=group)
    question = mentioning(harness, group, ann, f"{BOT} is that true?", reply_to=claim["message_id"])
    await harness.settle()
    assert fake_gptalk.prompts == [
        "Bob wrote:\n> The moon is made of cheese.\n> Trust me.\n\nAnn: is that true?"
    ]
    assert harness.replies(question) == [render(fake_gptalk.answer).text]
    assert harness.replies(claim) == []


async def test_ask_with_a_question(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    first = harness.say(ann, "/ask what is love?", chat=group, entities=command("/ask"))
    await harness.settle()
    text = f"/ask{BOT} and baby don't hurt me"
    second = harness.say(ann, text, chat=group, entities=command(text))
    await harness.settle()
    assert fake_gptalk.prompts[0] == "Ann: what is love?"
    assert last_turn(fake_gptalk.prompts[1]) == "Ann: and baby don't hurt me"
    for question in (first, second):
        assert harness.answer(question) == render(fake_gptalk.answer).text


async def test_ask_as_a_reply_takes_the_replied_message_as_context(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.answer = "It is not."
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    claim = harness.say(bob, "Tomatoes are vegetables.", chat=group)
    with_question = harness.say(
        ann, "/ask is he right?", chat=group, entities=command("/ask"), reply_to=claim["message_id"]
    )
    await harness.settle()
    bare = harness.say(
        ann, "/ask", chat=group, entities=command("/ask"), reply_to=claim["message_id"]
    )
    await harness.settle()
    assert fake_gptalk.prompts[0] == "Bob wrote:\n> Tomatoes are vegetables.\n\nAnn: is he right?"
    assert last_turn(fake_gptalk.prompts[1]).startswith("Bob wrote:\n> Tomatoes are vegetables.")
    assert fake_gptalk.prompts[1].endswith("\n\nAnn: What do you say to this?\nAssistant:")
    assert harness.replies(with_question) == ["It is not."]
    assert harness.replies(bare) == ["It is not."]


async def test_ask_with_neither_question_nor_reply_gets_the_usage(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ask = harness.say(harness.user(1, "Ann"), "/ask", chat=group, entities=command("/ask"))
    await harness.settle()
    [usage] = harness.replies(ask)
    assert usage.startswith("Usage: /ask")
    assert fake_gptalk.submits == 0


async def test_caption_mentioning_the_bot_is_a_prompt(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    caption = f"🐈 {BOT} what breed is a cat like this?"
    photo = harness.say(
        ann, None, chat=group, photo=True, caption=caption,
        caption_entities=[entity(caption, BOT)],
    )  # fmt: skip
    await harness.settle()
    caption = f"{BOT} summarize this file"
    document = harness.say(
        ann, None, chat=group, document=True, caption=caption,
        caption_entities=[entity(caption, BOT)],
    )  # fmt: skip
    await harness.settle()
    assert fake_gptalk.prompts[0] == "Ann: 🐈 what breed is a cat like this?"
    assert last_turn(fake_gptalk.prompts[1]) == "Ann: summarize this file"
    for message in (photo, document):
        assert harness.answer(message) == render(fake_gptalk.answer).text


async def test_sticker_replying_to_the_bot_gets_a_text_only_hint(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    mentioning(harness, group, ann, f"{BOT} hi")
    await harness.settle()
    [answer] = tg.bot_messages(GROUP_ID)
    sticker = harness.say(ann, None, chat=group, sticker=True, reply_to=answer.message_id)
    await harness.settle()
    [hint] = harness.replies(sticker)
    assert "only read text" in hint
    assert fake_gptalk.submits == 1


async def test_only_a_mention_gets_a_hint(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    mention = mentioning(harness, group, harness.user(1, "Ann"), f"  {BOT} ")
    await harness.settle()
    [hint] = harness.replies(mention)
    assert "question" in hint.lower()
    assert len(hint) < 200
    assert fake_gptalk.submits == 0


async def test_anonymous_admin_mentioning_the_bot_is_answered(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)  # ALLOWED_USER_IDS empty: open to everyone
    group = tg.group_chat(GROUP_ID, "Book club")
    service_bot = tg.add_user(
        ANONYMOUS_ADMIN_ID, "Group", username="GroupAnonymousBot", is_bot=True
    )
    question = mentioning(harness, group, service_bot, f"{BOT} any news?", sender_chat=group)
    await harness.settle()
    assert harness.answer(question) == render(fake_gptalk.answer).text
    [prompt] = fake_gptalk.prompts
    speaker, _, text = prompt.partition(": ")
    assert text == "any news?"
    # Not the service account's placeholder name "Group": the chat the admin speaks for,
    # or plainly an (anonymous) admin.
    assert speaker == "Book club" or "admin" in speaker.lower(), prompt


async def test_quote_of_an_anonymous_admin_does_not_name_the_service_account(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    service_bot = tg.add_user(
        ANONYMOUS_ADMIN_ID, "Group", username="GroupAnonymousBot", is_bot=True
    )
    rule = harness.say(service_bot, "No spoilers before Friday.", chat=group, sender_chat=group)
    mentioning(harness, group, harness.user(1, "Ann"), f"{BOT} why?", reply_to=rule["message_id"])
    await harness.settle()
    [prompt] = fake_gptalk.prompts
    author, _, rest = prompt.partition(" wrote:\n")
    assert rest == "> No spoilers before Friday.\n\nAnn: why?"
    assert author == "Book club" or "admin" in author.lower(), prompt


async def test_anonymous_admin_is_ignored_when_the_bot_is_restricted(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot, allowed_user_ids=frozenset({1}))
    group = tg.group_chat(GROUP_ID, "Book club")
    service_bot = tg.add_user(
        ANONYMOUS_ADMIN_ID, "Group", username="GroupAnonymousBot", is_bot=True
    )
    mark = len(tg.calls)
    mentioning(harness, group, service_bot, f"{BOT} any news?", sender_chat=group)
    await harness.settle()
    assert api_calls_since(tg, mark) == []
    assert fake_gptalk.submits == 0


# --- conversations: per chat, per topic ---------------------------------------------------------


async def test_forum_topics_are_separate_conversations(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.reply = lambda prompt: f"About {last_turn(prompt)}"
    harness = await start(make_bot)
    forum = tg.group_chat(FORUM_ID, "Makers", forum=True)
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    cooking, garden = tg.forum_topic(forum, "Cooking"), tg.forum_topic(forum, "Garden")

    def in_topic(user: Json, thread: int | None, text: str) -> Json:
        if thread is None:  # the General topic: no thread id
            return mentioning(harness, forum, user, text)
        return mentioning(harness, forum, user, text, thread_id=thread, is_topic_message=True)

    questions = [
        in_topic(ann, cooking, f"{BOT} pasta"),
        in_topic(bob, garden, f"{BOT} roses"),
        in_topic(ann, None, f"{BOT} hello all"),
    ]
    await harness.settle()
    questions.append(in_topic(bob, cooking, f"{BOT} and the sauce?"))
    await harness.settle()

    assert sorted(fake_gptalk.prompts[:3]) == ["Ann: hello all", "Ann: pasta", "Bob: roses"]
    assert fake_gptalk.prompts[3] == (
        "User: Ann: pasta\nAssistant: About Ann: pasta\nUser: Bob: and the sauce?\nAssistant:"
    )
    assert await stored(redis, history_key(FORUM_ID, cooking)) == [
        {"role": "user", "content": "Ann: pasta", "asker": 1},
        {"role": "assistant", "content": "About Ann: pasta", "asker": 1},
        {"role": "user", "content": "Bob: and the sauce?", "asker": 2},
        {"role": "assistant", "content": "About Bob: and the sauce?", "asker": 2},
    ]
    assert await stored(redis, history_key(FORUM_ID, garden)) == [
        {"role": "user", "content": "Bob: roses", "asker": 2},
        {"role": "assistant", "content": "About Bob: roses", "asker": 2},
    ]
    assert await stored(redis, history_key(FORUM_ID)) == [
        {"role": "user", "content": "Ann: hello all", "asker": 1},
        {"role": "assistant", "content": "About Ann: hello all", "asker": 1},
    ]
    for question in questions:
        [reply] = [m for m in tg.bot_messages(FORUM_ID) if m.reply_to == question["message_id"]]
        assert reply.thread_id == question.get("message_thread_id")
        assert reply.text == f"About {question['from']['first_name']}: " + (
            question["text"].replace(f"{BOT} ", "")
        )
    assert sent_threads(tg, FORUM_ID) == {cooking, garden, None}
    no_rejections(tg)


async def test_new_for_another_bot_is_ignored_and_for_this_bot_clears(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    tg.set_member(group, ann, "administrator")  # /new in a group is for its administrators
    key = history_key(GROUP_ID)
    mentioning(harness, group, ann, f"{BOT} remember 42")
    await harness.settle()
    assert len(await stored(redis, key)) == 2

    mark = len(tg.calls)
    harness.say(ann, "/new@otherbot", chat=group, entities=command("/new@otherbot"))
    await harness.settle()
    assert api_calls_since(tg, mark) == []
    assert len(await stored(redis, key)) == 2

    for text in (f"/new{BOT}", "/new@GPTalk_Test_Bot", "/new", "/reset"):
        harness.say(ann, text, chat=group, entities=command(text))
        await harness.settle()
        assert await redis.exists(key) == 0, text
        assert "New conversation" in tg.bot_messages(GROUP_ID)[-1].text, text
        mentioning(harness, group, ann, f"{BOT} what did I ask you to remember?")
        await harness.settle()
        assert fake_gptalk.prompts[-1] == "Ann: what did I ask you to remember?", text


async def test_new_in_a_topic_clears_only_that_topic(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot)
    forum = tg.group_chat(FORUM_ID, "Makers", forum=True)
    ann = harness.user(1, "Ann")
    tg.set_member(forum, ann, "creator")
    cooking, garden = tg.forum_topic(forum, "Cooking"), tg.forum_topic(forum, "Garden")
    mentioning(harness, forum, ann, f"{BOT} general")
    for thread in (cooking, garden):
        mentioning(harness, forum, ann, f"{BOT} hi", thread_id=thread, is_topic_message=True)
    await harness.settle()
    text = f"/new{BOT}"
    harness.say(
        ann, text, chat=forum, entities=command(text), thread_id=cooking, is_topic_message=True
    )
    await harness.settle()
    assert await redis.exists(history_key(FORUM_ID, cooking)) == 0
    assert len(await stored(redis, history_key(FORUM_ID, garden))) == 2
    assert len(await stored(redis, history_key(FORUM_ID))) == 2
    notice = tg.bot_messages(FORUM_ID)[-1]
    assert "New conversation" in notice.text
    assert notice.thread_id == cooking


# --- /new in a group: the chat's administrators and the bot's admins ---------------------------


CHANNEL_BOT_ID = 136817688  # Telegram's Channel_Bot: the sender of a linked channel's posts


def new_in(harness: BotHarness, chat: Json, user: Json, text: str = "/new", **kwargs: Any) -> Json:
    """``user`` sends ``/new`` (or ``text``) in ``chat``, marked as a command like Telegram does."""
    return harness.say(user, text, chat=chat, entities=command(text), **kwargs)


def member_checks(tg: FakeTelegram) -> list[tuple[int, int]]:
    """(chat, user) of every getChatMember the bot made."""
    return [(c.params["chat_id"], c.params["user_id"]) for c in tg.calls_to("getChatMember")]


async def test_a_members_new_is_refused_and_stops_and_forgets_nothing(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    ivan = tg.add_user(3, "Ivan", language_code="ru")
    mentioning(harness, group, ann, f"{BOT} remember 42")
    await harness.settle()
    first_answer = fake_gptalk.answer
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~2 s
    running = mentioning(harness, group, bob, f"{BOT} talk")
    await tg.wait_for(lambda: bool(harness.replies(running)))

    refused = new_in(harness, group, ann)
    refused_ru = new_in(harness, group, ivan, "/reset")
    await harness.settle()
    assert harness.replies(refused) == [EN.new_admins_only]
    assert harness.replies(refused_ru) == [RU.new_admins_only]
    assert harness.answer(running) == render(fake_gptalk.answer).text  # not stopped
    assert [turn["content"] for turn in await stored(redis, history_key(GROUP_ID))] == [
        "Ann: remember 42",
        first_answer,
        "Bob: talk",
        fake_gptalk.answer,
    ]
    assert sorted(member_checks(tg)) == [(GROUP_ID, 1), (GROUP_ID, 3)]
    no_rejections(tg)


@pytest.mark.parametrize(
    ("status", "resets"),
    [("creator", True), ("administrator", True), ("member", False), ("restricted", False)],
)
async def test_new_in_a_group_needs_a_chat_administrator(
    status: str,
    resets: bool,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    tg.set_member(group, ann, status)
    mentioning(harness, group, bob, f"{BOT} remember 42")
    await harness.settle()
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~2 s
    running = mentioning(harness, group, bob, f"{BOT} talk")
    await tg.wait_for(lambda: bool(harness.replies(running)))

    new = new_in(harness, group, ann)
    await harness.settle()
    assert member_checks(tg) == [(GROUP_ID, 1)]  # Telegram was asked who Ann is
    if resets:
        assert await redis.exists(history_key(GROUP_ID)) == 0
        [stopped] = harness.replies(running)  # Bob's answer, stopped
        assert stopped.endswith("the conversation was reset.")
        assert tg.bot_messages(GROUP_ID)[-1].text == EN.new_conversation
    else:
        assert harness.replies(new) == [EN.new_admins_only]
        assert harness.answer(running) == render(fake_gptalk.answer).text
        assert len(await stored(redis, history_key(GROUP_ID))) == 4


async def test_an_admin_from_admin_ids_resets_a_group_without_asking_telegram(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot, admin_ids=frozenset({9}))
    group = tg.group_chat(GROUP_ID, "Book club")
    bob, boss = harness.user(2, "Bob"), harness.user(9, "Boss")  # both plain members there
    mentioning(harness, group, bob, f"{BOT} remember 42")
    await harness.settle()

    refused = new_in(harness, group, bob)
    await harness.settle()
    assert harness.replies(refused) == [EN.new_admins_only]
    assert len(await stored(redis, history_key(GROUP_ID))) == 2

    new_in(harness, group, boss, f"/reset{BOT}")
    await harness.settle()
    assert await redis.exists(history_key(GROUP_ID)) == 0
    assert tg.bot_messages(GROUP_ID)[-1].text == EN.new_conversation
    assert member_checks(tg) == [(GROUP_ID, 2)]  # only Bob's status was asked
    no_rejections(tg)


async def test_an_anonymous_admins_new_resets_and_a_linked_channels_is_refused(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    channel = {"id": -100555, "type": "channel", "title": "News"}
    channel_bot = tg.add_user(CHANNEL_BOT_ID, "Channel", username="Channel_Bot", is_bot=True)
    anonymous = tg.add_user(ANONYMOUS_ADMIN_ID, "Group", username="GroupAnonymousBot", is_bot=True)
    mentioning(harness, group, harness.user(1, "Ann"), f"{BOT} remember 42")
    await harness.settle()

    # A channel's posts in its discussion group are not its administrators' words.
    refused = new_in(harness, group, channel_bot, sender_chat=channel)
    await harness.settle()
    assert harness.replies(refused) == [EN.new_admins_only]
    assert len(await stored(redis, history_key(GROUP_ID))) == 2

    # Only an administrator can write as the group itself.
    new_in(harness, group, anonymous, sender_chat=group)
    await harness.settle()
    assert await redis.exists(history_key(GROUP_ID)) == 0
    assert tg.bot_messages(GROUP_ID)[-1].text == EN.new_conversation
    assert member_checks(tg) == []  # both known from the message alone
    no_rejections(tg)


async def test_one_get_chat_member_per_user_a_minute(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    tg.set_member(group, ann, "administrator")
    for _ in range(2):
        new_in(harness, group, ann)
        await harness.settle()
        assert tg.bot_messages(GROUP_ID)[-1].text == EN.new_conversation
        refused = new_in(harness, group, bob)
        await harness.settle()
        assert harness.replies(refused) == [EN.new_admins_only]
    assert member_checks(tg) == [(GROUP_ID, 1), (GROUP_ID, 2)]  # the refusal is kept too


@pytest.mark.parametrize(
    "fault",
    [
        {"error_code": 502, "description": "Bad Gateway", "html": BAD_GATEWAY_HTML},
        {"error_code": 400, "description": PARTICIPANT_ID_INVALID},
        {"error_code": 429, "description": "Too Many Requests: retry after 5", "retry_after": 5},
    ],
    ids=["proxy down", "PARTICIPANT_ID_INVALID", "429"],
)
async def test_new_fails_closed_when_telegram_does_not_say_who_administers(
    fault: Json,
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann = harness.user(1, "Ann")
    tg.set_member(group, ann, "creator")
    mentioning(harness, group, ann, f"{BOT} remember 42")
    await harness.settle()

    tg.fail_next("getChatMember", **fault)
    failed = new_in(harness, group, ann)
    # The check fails on purpose: the errors router answers, after the update is done.
    await tg.wait_for(lambda: bool(harness.replies(failed)), timeout=10)
    assert harness.replies(failed) == [EN.admin_check_failed]
    assert [type(e).__name__ for e in harness.tracker.errors] == ["ChatAdminsUnavailableError"]
    harness.tracker.errors.clear()
    assert len(await stored(redis, history_key(GROUP_ID))) == 2
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback anywhere

    new_in(harness, group, ann)  # a failure is not remembered: asked again, and it works
    await harness.settle()
    assert await redis.exists(history_key(GROUP_ID)) == 0
    assert member_checks(tg) == [(GROUP_ID, 1), (GROUP_ID, 1)]


async def test_stop_in_a_topic_stops_only_that_topics_answer(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~2 s
    harness = await start(make_bot)
    forum = tg.group_chat(FORUM_ID, "Makers", forum=True)
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    cooking, garden = tg.forum_topic(forum, "Cooking"), tg.forum_topic(forum, "Garden")
    first = mentioning(harness, forum, ann, f"{BOT} talk", thread_id=cooking, is_topic_message=True)
    second = mentioning(harness, forum, bob, f"{BOT} talk", thread_id=garden, is_topic_message=True)
    await tg.wait_for(lambda: bool(harness.replies(first)))
    await asyncio.sleep(0.5)
    harness.say(
        ann, "/stop", chat=forum, entities=command("/stop"), thread_id=cooking,
        is_topic_message=True,
    )  # fmt: skip
    await harness.settle()
    stopped = harness.answer(first)
    assert stopped.endswith("Stopped.")
    assert 0 < stopped.count("word") < 80
    assert harness.answer(second) == render(fake_gptalk.answer).text
    [*_, last] = await stored(redis, history_key(FORUM_ID, cooking))
    assert last["content"].endswith("⏹ _Stopped._")
    no_rejections(tg)


# --- pacing: many answers in one group ----------------------------------------------------------


def poem_for(prompt: str) -> str:
    """A ~500-character Markdown answer naming who asked and what about."""
    who, _, about = last_turn(prompt).partition(": ")
    lines = "\n".join(f"Line {i}: _{about}_ for {who}, slowly." for i in range(1, 13))
    return f"**A poem for {who} about {about}**\n\n{lines}"


@dataclass(frozen=True)
class Figures:
    real: float  # seconds until every answer was complete
    fake: float  # the same on Telegram's clock
    first_sends: float  # fake seconds until the last answer's first message was out


def busiest_window(tg: FakeTelegram, chat_id: int, window: float = 60.0) -> int:
    """Most sends+edits in ``chat_id`` within any ``window`` fake seconds."""
    times = sorted(
        call.at
        for call in tg.calls
        if call.ok
        and call.method in {"sendMessage", "editMessageText"}
        and call.params.get("chat_id") == chat_id
    )
    return max((sum(t <= u < t + window for u in times) for t in times), default=0)


async def stream_many(
    harness: BotHarness,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    chat: Json,
    askers: Sequence[tuple[Json, int | None]],
    label: str,
) -> Figures:
    """Everyone in ``askers`` mentions the bot at the same moment; wait for every answer,
    check it, and print the figures."""
    fake_gptalk.reply = poem_for
    fake_gptalk.chunk_size, fake_gptalk.delay = 12, 0.07  # ~3 s (30 fake s) per answer
    chat_id = chat["id"]
    real_start, fake_start = time.monotonic(), tg.now()
    questions = []
    for user, thread in askers:
        text = f"{BOT} {user['first_name'].lower()}'s garden"
        extra: Json = {} if thread is None else {"thread_id": thread, "is_topic_message": True}
        questions.append(mentioning(harness, chat, user, text, **extra))
    await harness.settle(within=80)
    real, fake = time.monotonic() - real_start, tg.now() - fake_start
    sends, edits = tg.calls_to("sendMessage", chat_id), tg.calls_to("editMessageText", chat_id)
    figures = Figures(real, fake, max(call.at for call in sends) - fake_start)
    print(
        f"\n[{label}] {len(questions)} answers: {len(sends)} sendMessage + {len(edits)} "
        f"editMessageText (busiest 60 s: {busiest_window(tg, chat_id)}), "
        f"{tg.too_many_requests} x 429, {sum(not c.ok for c in tg.calls)} failed calls; "
        f"all first messages out after {figures.first_sends:.0f} s, all answers complete "
        f"after {real:.1f} s real = {fake:.0f} s on Telegram's clock"
    )
    no_rejections(tg)
    for question, (user, thread) in zip(questions, askers, strict=True):
        name = user["first_name"]
        expected = render(poem_for(f"{name}: {name.lower()}'s garden")).text
        assert tg.visible_text(chat_id, question["message_id"]) == expected
        replies = [m for m in tg.bot_messages(chat_id) if m.reply_to == question["message_id"]]
        assert [m.thread_id for m in replies] == [thread]
    assert len(sends) == len(questions)  # one message per answer: no notices, no retries
    assert len(edits) > len(questions)  # the answers streamed: not only final edits
    assert sent_threads(tg, chat_id) == {thread for _, thread in askers}
    return figures


async def test_five_answers_streaming_at_once_in_one_group_share_its_budget(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    """Five people in five topics of one forum group: five conversations streaming at the
    same time, all paced by that group's single 20-per-minute window."""
    harness = await start(make_bot)
    forum = tg.group_chat(FORUM_ID, "Makers", forum=True)
    askers = [
        (harness.user(i, name), tg.forum_topic(forum, f"{name}'s corner"))
        for i, name in enumerate(NAMES, start=1)
    ]
    figures = await stream_many(harness, tg, fake_gptalk, forum, askers, "5 topics at once")
    assert figures.first_sends < 15  # all five started together (one answer: ~30 fake s)
    assert len(fake_gptalk.prompts) == 5
    assert max(fake_gptalk.prompts, key=len).count("User:") == 0  # five fresh conversations


async def test_five_answers_in_two_topics_share_the_group_budget(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    forum = tg.group_chat(FORUM_ID, "Makers", forum=True)
    cooking, garden = tg.forum_topic(forum, "Cooking"), tg.forum_topic(forum, "Garden")
    threads = [cooking, garden, cooking, garden, cooking]
    askers = [
        (harness.user(i, name), thread)
        for i, (name, thread) in enumerate(zip(NAMES, threads, strict=True), 1)
    ]
    await stream_many(harness, tg, fake_gptalk, forum, askers, "2 topics, 5 answers")
    # Different people in one topic were answered at once; each prompt is the topic's
    # conversation as it stood when the answer started: the earlier questions, no answers.
    cooking = {last_turn(p): p for p in fake_gptalk.prompts if "ann's garden" in p}
    assert sorted(cooking) == ["Ann: ann's garden", "Cid: cid's garden", "Eve: eve's garden"]
    assert cooking["Ann: ann's garden"] == "Ann: ann's garden"
    assert "Ann: ann's garden" in cooking["Cid: cid's garden"]
    assert "Cid: cid's garden" in cooking["Eve: eve's garden"]
    assert all("A poem" not in p for p in cooking.values())


def first_edit_after_all_first_sends(tg: FakeTelegram, chat_id: int) -> bool:
    calls = [c for c in tg.calls if c.ok and c.params.get("chat_id") == chat_id]
    sends = [i for i, c in enumerate(calls) if c.method == "sendMessage"]
    edits = [i for i, c in enumerate(calls) if c.method == "editMessageText"]
    return max(sends) < min(edits)


async def test_five_askers_at_once_in_one_plain_group_are_answered_together(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    """A plain group is one conversation, but different people's prompts stream at once
    (GROUP_MAX_CONCURRENT, default 5), sharing the group's budget: every first message
    goes out before any intermediate edit, with no 429."""
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    askers = [(harness.user(i, n), None) for i, n in enumerate(NAMES, 1)]
    fake_start = tg.now()
    figures = await stream_many(harness, tg, fake_gptalk, group, askers, "plain group, 5 askers")
    firsts = sorted(c.at - fake_start for c in tg.calls_to("sendMessage", GROUP_ID))
    print(f"[plain group, 5 askers] first messages after {[round(t, 1) for t in firsts]} s")
    assert len(fake_gptalk.prompts) == 5
    assert first_edit_after_all_first_sends(tg, GROUP_ID)
    # one answer alone takes ~30 Telegram seconds: five in turn would take 150
    assert figures.fake < 120
    history = await stored(redis, history_key(GROUP_ID))
    assert [t["role"] for t in history] == ["user"] * 5 + ["assistant"] * 5
    for turn in history:  # every turn knows whose question it is or answers
        asker_name = NAMES[turn["asker"] - 1]
        assert asker_name.lower() in turn["content"].lower()


async def test_a_follow_up_waits_for_the_askers_own_answer_and_sees_it(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    fake_gptalk.reply = poem_for
    fake_gptalk.chunk_size, fake_gptalk.delay = 40, 0.1
    mentioning(harness, group, ann, f"{BOT} roses")
    mentioning(harness, group, ann, f"{BOT} tulips")
    mentioning(harness, group, bob, f"{BOT} daisies")
    await harness.settle(within=60)
    turns = [last_turn(p) for p in fake_gptalk.prompts]
    # Bob did not wait for Ann; Ann's follow-up came after her first answer and saw it.
    assert turns.index("Bob: daisies") < turns.index("Ann: tulips")
    [follow_up] = [p for p in fake_gptalk.prompts if last_turn(p) == "Ann: tulips"]
    assert "A poem for Ann about roses" in follow_up
    no_rejections(tg)


async def test_beyond_the_cap_prompts_wait_in_order_and_beyond_ten_are_refused(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot, group_max_concurrent=2)
    group = tg.group_chat(GROUP_ID, "Book club")
    fake_gptalk.answer = "fine"
    fake_gptalk.chunk_size, fake_gptalk.delay = 1, 0.5  # ~2 s per answer: all arrive first
    users = [harness.user(i, f"U{i}") for i in range(1, 14)]
    questions = [mentioning(harness, group, u, f"{BOT} q{u['id']}") for u in users]
    await tg.wait_for(lambda: len(fake_gptalk.prompts) >= 2)
    await asyncio.sleep(0.3)
    assert len(fake_gptalk.prompts) == 2  # the cap: two at once
    await harness.settle(within=120)
    # 2 running + 10 waiting; the 13th is told to ask again
    asked = [last_turn(p) for p in fake_gptalk.prompts]
    assert sorted(asked) == sorted(f"U{i}: q{i}" for i in range(1, 13))
    [busy] = harness.replies(questions[12])
    assert "moment" in busy


async def test_stop_in_a_group_stops_only_the_senders_own_answer(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    harness = await start(make_bot, admin_ids=frozenset({9}))
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob, cid, boss = (
        harness.user(i, n) for i, n in [(1, "Ann"), (2, "Bob"), (3, "Cid"), (9, "Boss")]
    )
    fake_gptalk.answer = "word " * 80
    fake_gptalk.chunk_size, fake_gptalk.delay = 10, 0.05  # ~2 s
    first = mentioning(harness, group, ann, f"{BOT} talk")
    second = mentioning(harness, group, bob, f"{BOT} talk")
    third = mentioning(harness, group, cid, f"{BOT} talk")
    await tg.wait_for(lambda: all(harness.replies(q) for q in (first, second, third)))
    stranger = harness.user(4, "Dee")
    nothing = harness.say(stranger, "/stop", chat=group, entities=command("/stop"))
    harness.say(ann, "/stop", chat=group, entities=command("/stop"))
    # an admin stops someone else's answer by replying to it
    [bobs] = [m for m in tg.bot_messages(GROUP_ID) if m.reply_to == second["message_id"]]
    harness.say(boss, "/stop", chat=group, entities=command("/stop"), reply_to=bobs.message_id)
    await harness.settle()
    assert harness.answer(first).endswith("Stopped.")
    assert harness.answer(second).endswith("Stopped.")
    assert harness.answer(third) == render(fake_gptalk.answer).text
    [refusal] = harness.replies(nothing)
    assert "none of the answers" in refusal
    no_rejections(tg)


async def test_retry_in_a_group_regenerates_the_senders_own_question(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    harness = await start(make_bot)
    group = tg.group_chat(GROUP_ID, "Book club")
    ann, bob = harness.user(1, "Ann"), harness.user(2, "Bob")
    fake_gptalk.reply = poem_for
    mentioning(harness, group, ann, f"{BOT} roses")
    await harness.settle()
    mentioning(harness, group, bob, f"{BOT} daisies")
    await harness.settle()
    harness.say(ann, "/retry", chat=group, entities=command("/retry"))
    await harness.settle()
    assert last_turn(fake_gptalk.prompts[-1]) == "Ann: roses"
    assert "daisies" not in fake_gptalk.prompts[-1]  # the conversation as it stood then
    history = await stored(redis, history_key(GROUP_ID))
    answers = [t["content"] for t in history if t["role"] == "assistant"]
    # Ann's old answer was replaced by the new one; Bob's stays
    assert [a.splitlines()[0] for a in answers] == [
        "**A poem for Bob about daisies**",
        "**A poem for Ann about roses**",
    ]
