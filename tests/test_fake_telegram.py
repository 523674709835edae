"""Tests of the fake Telegram Bot API, driven by a real aiogram Bot (and raw HTTP where needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    ChatMemberRestricted,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    ReplyParameters,
)

from tests.fake_telegram import (
    BAD_GATEWAY_HTML,
    NOT_MODIFIED,
    PARTICIPANT_ID_INVALID,
    USER_NOT_FOUND,
    FakeTelegram,
)

MakeFake = Callable[..., Awaitable[FakeTelegram]]
MakeBot = Callable[[FakeTelegram], Bot]


class _PlainHttpSession(AiohttpSession):
    """aiogram's session minus the fixed 0.25 s sleep of close() (meant for SSL; we use HTTP)."""

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


@pytest.fixture
async def make_fake() -> AsyncIterator[MakeFake]:
    fakes: list[FakeTelegram] = []

    async def make(**kwargs: Any) -> FakeTelegram:
        fake = FakeTelegram(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.close()


@pytest.fixture
async def make_bot() -> AsyncIterator[MakeBot]:
    bots: list[Bot] = []

    def make(fake: FakeTelegram) -> Bot:
        session = _PlainHttpSession(api=TelegramAPIServer.from_base(fake.url))
        bot = Bot(fake.token, session=session)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.session.close()


@pytest.fixture
async def fake(make_fake: MakeFake) -> FakeTelegram:
    return await make_fake()


@pytest.fixture
def bot(fake: FakeTelegram, make_bot: MakeBot) -> Bot:
    return make_bot(fake)


def _user_and_chat(fake: FakeTelegram, user_id: int = 1001) -> tuple[dict[str, Any], int]:
    user = fake.add_user(user_id, "Ann", username="ann")
    return user, fake.private_chat(user)["id"]


async def test_get_me(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.id == 123456
    assert me.is_bot
    assert me.username == "gptalk_test_bot"
    assert me.can_join_groups is True
    assert me.can_read_all_group_messages is False
    assert me.supports_inline_queries is False
    assert fake.calls_to("getMe")[0].ok


async def test_send_message_with_entities_and_reply(fake: FakeTelegram, bot: Bot) -> None:
    user, chat_id = _user_and_chat(fake)
    question = fake.user_message(fake.private_chat(user), user, "what is 2+2?")
    sent = await bot.send_message(
        chat_id,
        "It is 4. 😀 See docs",
        entities=[
            MessageEntity(type="bold", offset=6, length=1),
            MessageEntity(type="text_link", offset=16, length=4, url="https://example.com/"),
        ],
        reply_parameters=ReplyParameters(message_id=question["message_id"]),
    )
    assert sent.message_id == question["message_id"] + 1  # one id counter per chat
    assert sent.reply_to_message is not None
    assert sent.reply_to_message.message_id == question["message_id"]
    assert sent.reply_to_message.text == "what is 2+2?"
    assert sent.entities is not None
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [
        ("bold", 6, 1),
        ("text_link", 16, 4),
    ]
    stored = fake.bot_messages(chat_id)
    assert len(stored) == 1
    assert stored[0].reply_to == question["message_id"]
    assert stored[0].entities[1] == {
        "type": "text_link",
        "offset": 16,
        "length": 4,
        "url": "https://example.com/",
    }
    call = fake.calls_to("sendmessage", chat_id=chat_id)[0]
    assert call.params["reply_parameters"] == {"message_id": question["message_id"]}
    assert call.params["chat_id"] == chat_id
    # replying to a message that does not exist
    with pytest.raises(TelegramBadRequest, match="message to be replied not found"):
        await bot.send_message(chat_id, "x", reply_parameters=ReplyParameters(message_id=999))
    ok = await bot.send_message(
        chat_id,
        "y",
        reply_parameters=ReplyParameters(message_id=999, allow_sending_without_reply=True),
    )
    assert ok.reply_to_message is None


async def test_text_is_trimmed_like_telegram(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    sent = await bot.send_message(
        chat_id, "  hi  ", entities=[MessageEntity(type="bold", offset=2, length=2)]
    )
    assert sent.text == "hi"
    assert sent.entities is not None
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 0, 2)]
    stored = fake.message(chat_id, sent.message_id)
    assert stored.text == "hi"
    assert stored.entities == [{"type": "bold", "offset": 0, "length": 2}]


async def test_cleaning_and_entity_fixes(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(enforce_limits=False)
    bot = make_bot(fake)
    _, chat_id = _user_and_chat(fake)
    # tab -> space, \r removed; a bold entity over " b" loses its leading space;
    # a whitespace-only italic entity disappears; touching bold entities merge
    sent = await bot.send_message(
        chat_id,
        "a\tb\r\nc d",
        entities=[
            MessageEntity(type="bold", offset=1, length=2),
            MessageEntity(type="bold", offset=3, length=2),
            MessageEntity(type="italic", offset=6, length=1),
        ],
    )
    assert sent.text == "a b\nc d"
    stored = fake.message(chat_id, sent.message_id)
    assert stored.entities == [{"type": "bold", "offset": 2, "length": 2}]
    # a trailing entity is clipped by the right trim
    sent = await bot.send_message(
        chat_id, "ab \n", entities=[MessageEntity(type="code", offset=1, length=3)]
    )
    assert fake.message(chat_id, sent.message_id).entities == [
        {"type": "code", "offset": 1, "length": 1}
    ]


async def test_edit_and_not_modified(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    sent = await bot.send_message(chat_id, "draft")
    edited = await bot.edit_message_text(
        "draft, longer", chat_id=chat_id, message_id=sent.message_id
    )
    assert isinstance(edited, Message)
    assert edited.text == "draft, longer"
    assert edited.edit_date is not None
    with pytest.raises(TelegramBadRequest, match="message is not modified") as info:
        await bot.edit_message_text("draft, longer", chat_id=chat_id, message_id=sent.message_id)
    assert info.value.message == NOT_MODIFIED
    # the same text after Telegram's trimming is "not modified" too
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("draft, longer \n", chat_id=chat_id, message_id=sent.message_id)
    # same text, different entities: a real change
    await bot.edit_message_text(
        "draft, longer",
        chat_id=chat_id,
        message_id=sent.message_id,
        entities=[MessageEntity(type="italic", offset=0, length=5)],
    )
    stored = fake.message(chat_id, sent.message_id)
    assert stored.edits == 2
    assert stored.history == ["draft", "draft, longer", "draft, longer"]
    not_modified = [c for c in fake.calls_to("editMessageText") if not c.ok]
    assert [c.error_code for c in not_modified] == [400, 400]


async def test_edit_only_own_existing_messages(fake: FakeTelegram, bot: Bot) -> None:
    user, chat_id = _user_and_chat(fake)
    chat = fake.private_chat(user)
    theirs = fake.user_message(chat, user, "hello")
    with pytest.raises(TelegramBadRequest, match="message can't be edited"):
        await bot.edit_message_text("x", chat_id=chat_id, message_id=theirs["message_id"])
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=chat_id, message_id=12345)
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(777, "x")


async def test_empty_text(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(chat_id, "")
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(chat_id, " \n\t ")
    sent = await bot.send_message(chat_id, "ok")
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.edit_message_text("  ", chat_id=chat_id, message_id=sent.message_id)
    assert fake.bot_messages(chat_id)[0].text == "ok"


async def test_too_long(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(enforce_limits=False)
    bot = make_bot(fake)
    _, chat_id = _user_and_chat(fake)
    assert (await bot.send_message(chat_id, "a" * 4096)).text == "a" * 4096
    assert (await bot.send_message(chat_id, "  " + "a" * 4096 + "\n")).text == "a" * 4096
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(chat_id, "a" * 4097)
    assert (await bot.send_message(chat_id, "😀" * 2048)).text == "😀" * 2048
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(chat_id, "😀" * 2049)  # 2049 characters, 4098 UTF-16 units
    assert len(fake.bot_messages(chat_id)) == 3


async def test_bad_entities(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    bad = [
        MessageEntity(type="bold", offset=0, length=3),  # past the end of "hi"
        MessageEntity(type="bold", offset=3, length=0),  # begins after the end
        MessageEntity(type="shiny", offset=0, length=1),
        MessageEntity(type="text_link", offset=0, length=1),  # no url
        MessageEntity(type="text_link", offset=0, length=1, url="javascript:alert(1)"),
    ]
    for entity in bad:
        with pytest.raises(TelegramBadRequest, match="can't parse entities"):
            await bot.send_message(chat_id, "hi", entities=[entity])
    # an emoji is 2 UTF-16 units: an entity ending inside it is invalid
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(
            chat_id, "😀x", entities=[MessageEntity(type="bold", offset=0, length=1)]
        )
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(
            chat_id,
            "hi",
            entities=[MessageEntity(type="bold", offset=0, length=2)],
            parse_mode="HTML",
        )
    assert fake.bot_messages(chat_id) == []
    # raw JSON that aiogram's models would not even produce
    async with aiohttp.ClientSession() as http:
        for entities in (
            [{"type": "pre", "offset": 0, "length": 2, "language": 5}],
            [{"type": "bold", "offset": -1, "length": 2}],
            "not json",
        ):
            async with http.post(
                f"{fake.url}/bot{fake.token}/sendMessage",
                data={"chat_id": str(chat_id), "text": "hi", "entities": _json(entities)},
            ) as resp:
                body = await resp.json()
            assert resp.status == 400
            assert body["ok"] is False
            assert body["description"].startswith("Bad Request: can't parse entities")


def _json(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


async def test_parse_modes(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(enforce_limits=False)
    bot = make_bot(fake)
    _, chat_id = _user_and_chat(fake)
    sent = await bot.send_message(
        chat_id, '<b>bold</b> &amp; <a href="https://t.me">link</a>', parse_mode="HTML"
    )
    assert sent.text == "bold & link"
    assert fake.message(chat_id, sent.message_id).entities == [
        {"type": "bold", "offset": 0, "length": 4},
        {"type": "text_link", "offset": 7, "length": 4, "url": "https://t.me"},
    ]
    for text in ("<b>unclosed", "<b>x</i>", "a <br> b", "1 < 2"):
        with pytest.raises(TelegramBadRequest, match="can't parse entities"):
            await bot.send_message(chat_id, text, parse_mode="HTML")
    sent = await bot.send_message(chat_id, "*bold* \\. `co\\`de`", parse_mode="MarkdownV2")
    assert sent.text == "bold . co`de"
    for text in ("2+2=4.", "*open", "a_b"):
        with pytest.raises(TelegramBadRequest, match="can't parse entities"):
            await bot.send_message(chat_id, text, parse_mode="MarkdownV2")
    with pytest.raises(TelegramBadRequest, match="unsupported parse_mode"):
        await bot.send_message(chat_id, "x", parse_mode="bbcode")


async def test_deleted_messages(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    first = await bot.send_message(chat_id, "one")
    second = await bot.send_message(chat_id, "two")
    fake.delete_message(chat_id, first.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("uno", chat_id=chat_id, message_id=first.message_id)
    assert await bot.delete_message(chat_id, second.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("dos", chat_id=chat_id, message_id=second.message_id)
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(chat_id, second.message_id)
    assert fake.bot_messages(chat_id) == []
    assert fake.message(chat_id, first.message_id).deleted


async def test_get_updates_long_poll_and_offsets(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(time_scale=0.1)
    bot = make_bot(fake)
    user, _ = _user_and_chat(fake)
    chat = fake.private_chat(user)
    first = fake.user_message(chat, user, "one")
    fake.user_message(chat, user, "two")

    updates = await bot.get_updates(timeout=30)  # pending: answered at once
    assert [u.message.text for u in updates if u.message] == ["one", "two"]
    assert updates[0].message is not None
    assert updates[0].message.message_id == first["message_id"]
    assert updates[0].message.from_user is not None
    assert updates[0].message.from_user.first_name == "Ann"
    assert (await bot.get_updates(limit=1))[0].update_id == updates[0].update_id

    # confirming by offset drops them
    assert await bot.get_updates(offset=updates[-1].update_id + 1) == []
    assert await bot.get_updates() == []
    assert fake.pending_updates == []

    # a waiting poll is woken by a new update
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(offset=updates[-1].update_id + 1, timeout=50))
    await fake.wait_for(lambda: fake.long_poll_pending)
    fake.user_message(chat, user, "three")
    woken = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - started < 2
    assert [u.message.text for u in woken if u.message] == ["three"]

    # and a poll with nothing to deliver ends after timeout * time_scale real seconds
    started = time.monotonic()
    assert await bot.get_updates(offset=woken[-1].update_id + 1, timeout=2) == []
    assert 0.15 < time.monotonic() - started < 1.5


async def test_two_concurrent_get_updates_conflict(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(time_scale=0.1)
    bot = make_bot(fake)
    user, _ = _user_and_chat(fake)
    first = asyncio.create_task(bot.get_updates(timeout=50))
    await fake.wait_for(lambda: fake.long_poll_pending)
    second = asyncio.create_task(bot.get_updates(timeout=50))
    # like Telegram, the newer request terminates the older one
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, 2)
    fake.user_message(fake.private_chat(user), user, "hi")
    updates = await asyncio.wait_for(second, 2)
    assert len(updates) == 1
    assert [c.error_code for c in fake.calls_to("getUpdates")] == [409, None]


async def test_allowed_updates_and_edited_messages(fake: FakeTelegram, bot: Bot) -> None:
    user, _ = _user_and_chat(fake)
    chat = fake.private_chat(user)
    sent = fake.user_message(chat, user, "typo")
    fake.edited_message(chat, user, sent["message_id"], "fixed")
    updates = await bot.get_updates(allowed_updates=["message"])
    assert updates[1].edited_message is not None
    assert updates[1].edited_message.text == "fixed"
    # from now on only "message" updates are queued
    fake.edited_message(chat, user, sent["message_id"], "fixed again")
    fake.user_message(chat, user, "new")
    updates = await bot.get_updates(offset=updates[-1].update_id + 1)
    assert [u.message.text for u in updates if u.message] == ["new"]
    assert len(fake.dropped_updates) == 1
    assert fake.message(chat["id"], sent["message_id"]).history == ["typo", "fixed", "fixed again"]


async def test_delete_webhook_drops_pending_updates(fake: FakeTelegram, bot: Bot) -> None:
    user, _ = _user_and_chat(fake)
    fake.user_message(fake.private_chat(user), user, "old")
    info = await bot.get_webhook_info()
    assert info.url == ""
    assert info.pending_update_count == 1
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.get_updates() == []


async def test_private_chat_burst_limit(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    for i in range(3):
        await bot.send_message(chat_id, f"m{i}")
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(chat_id, "m3")
    assert info.value.retry_after >= 1
    assert fake.too_many_requests == 1
    rejected = fake.calls_to("sendMessage")[-1]
    assert (rejected.ok, rejected.error_code) == (False, 429)
    assert rejected.description == f"Too Many Requests: retry after {info.value.retry_after}"
    assert len(fake.bot_messages(chat_id)) == 3
    # edits count too and change nothing when rejected
    first = fake.bot_messages(chat_id)[0]
    with pytest.raises(TelegramRetryAfter):
        await bot.edit_message_text("edited", chat_id=chat_id, message_id=first.message_id)
    assert first.text == "m0"
    # chat actions are not rate-limited; other chats have their own budget
    assert await bot.send_chat_action(chat_id, "typing")
    _, other_chat = _user_and_chat(fake, 2002)
    await bot.send_message(other_chat, "fine")


async def test_group_sliding_window(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(time_scale=0.01, group_limit=20, group_window=60.0)
    bot = make_bot(fake)
    group = fake.group_chat(-100123, "Team")
    for i in range(20):
        await bot.send_message(group["id"], f"m{i}")
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(group["id"], "m20")
    assert 50 <= info.value.retry_after <= 60  # fake seconds
    assert fake.too_many_requests == 1
    # sleeping retry_after fake seconds (retry_after * time_scale real ones) is enough
    await asyncio.sleep(info.value.retry_after * fake.time_scale + 0.05)
    await bot.send_message(group["id"], "m20")
    assert len(fake.bot_messages(group["id"])) == 21
    sends = fake.calls_to("sendMessage", chat_id=group["id"])
    assert sends[-1].at - sends[0].at >= 60.0  # Call.at is in fake seconds


async def test_bot_wide_limit_is_30_in_any_rolling_second(
    make_fake: MakeFake, make_bot: MakeBot
) -> None:
    # A slow fake clock: the whole burst happens within one fake second.
    fake = await make_fake(time_scale=100.0)
    bot = make_bot(fake)
    chats = [_user_and_chat(fake, 5000 + i)[1] for i in range(31)]
    for chat_id in chats[:30]:
        await bot.send_message(chat_id, "hi")
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(chats[30], "one too many")
    assert fake.too_many_requests == 1
    assert fake.now() < 1.0


async def test_injected_errors(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    fake.fail_next(
        "sendMessage",
        error_code=429,
        description="Too Many Requests: retry after 7",
        retry_after=7,
    )
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(chat_id, "x")
    assert info.value.retry_after == 7
    fake.fail_next("getMe", error_code=500, description="Internal Server Error", times=2)
    for _ in range(2):
        with pytest.raises(Exception, match="Internal Server Error"):
            await bot.get_me()
    assert (await bot.get_me()).id == 123456
    fake.block_chat(chat_id)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(chat_id, "x")
    with pytest.raises(TelegramForbiddenError):
        await bot.send_chat_action(chat_id, "typing")
    assert fake.injected_errors == 5
    assert fake.too_many_requests == 0
    assert fake.bot_messages(chat_id) == []


async def test_gateway_pages_and_unknown_status_codes(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    fake.fail_next("sendMessage", error_code=502, description="Bad Gateway", html=BAD_GATEWAY_HTML)
    with pytest.raises(ClientDecodeError, match="502 Bad Gateway"):  # not a TelegramAPIError
        await bot.send_message(chat_id, "x")
    fake.fail_next("sendMessage", error_code=418, description="I'm a teapot")
    with pytest.raises(TelegramAPIError, match="teapot") as info:
        await bot.send_message(chat_id, "x")
    assert type(info.value) is TelegramAPIError
    assert (await bot.send_message(chat_id, "x")).text == "x"
    assert [c.error_code for c in fake.calls_to("sendMessage")] == [502, 418, None]


async def test_group_migrates_to_a_supergroup(fake: FakeTelegram, bot: Bot) -> None:
    ann = fake.add_user(1, "Ann")
    group = fake.group_chat(-4001, "Team", supergroup=False)
    sent = await bot.send_message(group["id"], "before")
    new = fake.migrate_group(group["id"], -1004001, user=ann)
    assert new == {"id": -1004001, "type": "supergroup", "title": "Team"}
    with pytest.raises(TelegramMigrateToChat) as info:
        await bot.send_message(group["id"], "after")
    assert info.value.migrate_to_chat_id == -1004001
    with pytest.raises(TelegramMigrateToChat):
        await bot.edit_message_text("edited", chat_id=group["id"], message_id=sent.message_id)
    with pytest.raises(TelegramMigrateToChat):
        await bot.send_chat_action(group["id"], "typing")
    assert (await bot.send_message(-1004001, "after")).chat.type == "supergroup"
    old, created = [u.message for u in await bot.get_updates()]
    assert old is not None
    assert created is not None
    assert (old.chat.id, old.migrate_to_chat_id) == (-4001, -1004001)
    assert (created.chat.id, created.migrate_from_chat_id) == (-1004001, -4001)
    assert old.from_user is not None
    assert old.from_user.id == ann["id"]
    with pytest.raises(ValueError, match="basic groups"):
        fake.migrate_group(-1004001, -1004002)


async def test_bot_without_rights_and_closed_topics(fake: FakeTelegram, bot: Bot) -> None:
    ann = fake.add_user(1, "Ann")
    group = fake.group_chat(-100900, "Forum", forum=True)
    topic = fake.forum_topic(group, "Questions", user=ann)
    fake.close_topic(group["id"], topic)
    with pytest.raises(TelegramBadRequest, match="TOPIC_CLOSED"):
        await bot.send_message(group["id"], "x", message_thread_id=topic)
    assert await bot.send_message(group["id"], "general")  # only that topic
    fake.reopen_topic(group, topic, user=ann)
    assert await bot.send_message(group["id"], "x", message_thread_id=topic)

    fake.restrict_bot(group["id"])
    with pytest.raises(TelegramBadRequest, match="not enough rights to send text messages"):
        await bot.send_message(group["id"], "x")
    restricted = fake.bot_member_changed(group, "member", "restricted", user=ann)
    fake.unrestrict_bot(group["id"])
    assert await bot.send_message(group["id"], "x")
    fake.bot_member_changed(group, "restricted", "member", user=ann)
    fake.bot_member_changed(group, "member", "kicked", user=ann)
    assert restricted["new_chat_member"]["can_send_messages"] is False

    updates = await bot.get_updates()
    _topic_created, reopened = [u.message for u in updates if u.message]
    assert reopened is not None
    assert reopened.forum_topic_reopened is not None
    assert reopened.message_thread_id == topic
    assert reopened.is_topic_message
    changes = [u.my_chat_member for u in updates if u.my_chat_member]
    assert [(c.old_chat_member.status, c.new_chat_member.status) for c in changes if c] == [
        ("member", "restricted"),
        ("restricted", "member"),
        ("member", "kicked"),
    ]
    assert changes[0] is not None
    assert changes[0].new_chat_member.user.id == fake.bot_user["id"]
    assert fake.injected_errors == 2


async def test_set_my_commands_with_chat_scope(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    commands = [
        BotCommand(command="start", description="Start"),
        BotCommand(command="new", description="New chat"),
    ]
    assert await bot.set_my_commands(commands)
    admin = [*commands, BotCommand(command="token", description="Token status")]
    assert await bot.set_my_commands(admin, scope=BotCommandScopeChat(chat_id=chat_id))
    assert await bot.set_my_commands(commands, language_code="ru")
    assert set(fake.commands) == {"default", f"chat:{chat_id}", "default/ru"}
    assert [c["command"] for c in fake.commands[f"chat:{chat_id}"]] == ["start", "new", "token"]
    got = await bot.get_my_commands(scope=BotCommandScopeChat(chat_id=chat_id))
    assert [c.command for c in got] == ["start", "new", "token"]
    assert await bot.delete_my_commands(scope=BotCommandScopeDefault())
    assert await bot.get_my_commands() == []
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=4242))
    for bad in ("Start", "with space", "x" * 33):
        with pytest.raises(TelegramBadRequest):
            await bot.set_my_commands([BotCommand(command=bad, description="d")])
    with pytest.raises(TelegramBadRequest):
        await bot.set_my_commands([BotCommand(command="ok", description="d" * 257)])


async def test_chat_action_and_get_chat(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    assert await bot.send_chat_action(chat_id, "typing")
    with pytest.raises(TelegramBadRequest, match="wrong parameter action"):
        await bot.send_chat_action(chat_id, "dancing")
    group = fake.group_chat(-100500, "Forum", forum=True)
    info = await bot.get_chat(group["id"])
    assert info.is_forum is True
    assert info.title == "Forum"
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.get_chat(-1)


async def test_chat_members_as_declared(fake: FakeTelegram, bot: Bot) -> None:
    group = fake.group_chat(-100600, "Team")
    people = {
        status: fake.add_user(i, name)
        for i, (status, name) in enumerate(
            [
                ("creator", "Cat"),
                ("administrator", "Ann"),
                ("member", "Max"),
                ("restricted", "Rob"),
                ("left", "Lea"),
                ("kicked", "Kim"),
            ],
            start=1,
        )
    }
    for status, user in people.items():
        fake.set_member(group, user, status, custom_title="boss" if status == "creator" else None)
    kinds = {
        "creator": ChatMemberOwner,
        "administrator": ChatMemberAdministrator,
        "member": ChatMemberMember,
        "restricted": ChatMemberRestricted,
        "left": ChatMemberLeft,
        "kicked": ChatMemberBanned,
    }
    for status, user in people.items():
        member = await bot.get_chat_member(group["id"], user["id"])
        assert isinstance(member, kinds[status]), status
        assert (member.status, member.user.id, member.user.first_name) == (
            status,
            user["id"],
            user["first_name"],
        )
    owner = await bot.get_chat_member(group["id"], people["creator"]["id"])
    assert isinstance(owner, ChatMemberOwner)
    assert (owner.is_anonymous, owner.custom_title) == (False, "boss")

    # anonymous admins write as the chat: declared so, and reported so
    fake.set_member(group, people["administrator"], "administrator", is_anonymous=True)
    admin = await bot.get_chat_member(group["id"], people["administrator"]["id"])
    assert isinstance(admin, ChatMemberAdministrator)
    assert admin.is_anonymous is True
    assert admin.can_manage_chat is True

    # undeclared: a member once they wrote there, "left" before; the bot is a member
    eve, zed = fake.add_user(10, "Eve"), fake.add_user(11, "Zed")
    fake.user_message(group, eve, "hi all")
    assert (await bot.get_chat_member(group["id"], eve["id"])).status == "member"
    assert (await bot.get_chat_member(group["id"], zed["id"])).status == "left"
    me = await bot.get_chat_member(group["id"], fake.bot_user["id"])
    assert (me.status, me.user.id, me.user.is_bot) == ("member", fake.bot_user["id"], True)
    fake.restrict_bot(group["id"])
    assert (await bot.get_chat_member(group["id"], fake.bot_user["id"])).status == "restricted"
    # in a private chat: its user and the bot
    _, chat_id = _user_and_chat(fake, 2002)
    assert (await bot.get_chat_member(chat_id, chat_id)).status == "member"
    assert (await bot.get_chat_member(chat_id, eve["id"])).status == "left"
    assert len(fake.calls_to("getChatMember")) == 14
    assert len(fake.calls_to("getChatMember", chat_id=group["id"])) == 12
    assert fake.too_many_requests == 0

    with pytest.raises(ValueError, match="anonymous"):
        fake.set_member(
            fake.group_chat(-4100, "Basic", supergroup=False), eve, "creator", is_anonymous=True
        )
    with pytest.raises(ValueError, match="one creator"):
        fake.set_member(group, eve, "creator")
    with pytest.raises(ValueError, match="status"):
        fake.set_member(group, eve, "owner")


async def test_chat_member_errors_are_telegrams(fake: FakeTelegram, bot: Bot) -> None:
    group = fake.group_chat(-100601, "Team")
    ann = fake.add_user(1, "Ann")
    with pytest.raises(TelegramBadRequest, match="chat not found") as info:
        await bot.get_chat_member(-100999, ann["id"])
    assert info.value.message == "Bad Request: chat not found"
    with pytest.raises(TelegramBadRequest) as info:
        await bot.get_chat_member(group["id"], 777)  # a user the bot never met
    assert info.value.message == USER_NOT_FOUND
    with pytest.raises(TelegramBadRequest, match="invalid user_id specified"):
        await bot.get_chat_member(group["id"], 0)
    fake.fail_next("getChatMember", error_code=400, description=PARTICIPANT_ID_INVALID)
    with pytest.raises(TelegramBadRequest) as info:
        await bot.get_chat_member(group["id"], ann["id"])
    assert info.value.message == "Bad Request: PARTICIPANT_ID_INVALID"
    assert (await bot.get_chat_member(group["id"], ann["id"])).status == "left"
    fake.block_chat(group["id"])
    with pytest.raises(TelegramForbiddenError, match="kicked from the supergroup"):
        await bot.get_chat_member(group["id"], ann["id"])
    with pytest.raises(TelegramForbiddenError, match="kicked from the supergroup"):
        await bot.get_chat_administrators(group["id"])
    _, chat_id = _user_and_chat(fake, 2002)
    with pytest.raises(TelegramBadRequest, match="no administrators in the private chat"):
        await bot.get_chat_administrators(chat_id)


async def test_chat_administrators(fake: FakeTelegram, bot: Bot) -> None:
    group = fake.group_chat(-100602, "Team")
    ann, cat, max_ = fake.add_user(1, "Ann"), fake.add_user(2, "Cat"), fake.add_user(3, "Max")
    helper = fake.add_user(50, "Helper", username="helper_bot", is_bot=True)
    assert await bot.get_chat_administrators(group["id"]) == []
    fake.set_member(group, ann, "administrator")
    fake.set_member(group, max_, "member")
    fake.set_member(group, cat, "creator")
    fake.set_member(group, helper, "administrator")
    fake.set_member(group, fake.bot_user, "administrator")
    admins = await bot.get_chat_administrators(group["id"])
    # the creator first; other bots only when asked for
    assert [(a.user.id, a.status) for a in admins] == [
        (2, "creator"),
        (1, "administrator"),
        (fake.bot_user["id"], "administrator"),
    ]
    with_bots = await bot.get_chat_administrators(group["id"], return_bots=True)
    assert [a.user.id for a in with_bots] == [2, 1, 50, fake.bot_user["id"]]
    assert (await bot.get_chat_member(group["id"], fake.bot_user["id"])).status == "administrator"
    assert fake.too_many_requests == 0


async def test_member_reads_are_not_rate_limited(make_fake: MakeFake, make_bot: MakeBot) -> None:
    """An assumption (see the fake's _RATE_LIMITED): Telegram's flood limits are
    documented for sending, so reads never get a 429 here."""
    fake = await make_fake(time_scale=100.0)  # the whole burst within one fake second
    bot = make_bot(fake)
    group = fake.group_chat(-100603, "Team")
    ann = fake.add_user(1, "Ann")
    fake.set_member(group, ann, "administrator")
    for _ in range(40):
        assert (await bot.get_chat_member(group["id"], ann["id"])).status == "administrator"
    assert len(await bot.get_chat_administrators(group["id"])) == 1
    assert fake.too_many_requests == 0
    # Nor do they use up the bot-wide second: sends still get all 30 of theirs.
    chats = [_user_and_chat(fake, 100 + i)[1] for i in range(31)]
    for chat_id in chats[:30]:
        await bot.send_message(chat_id, "x")
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(chats[30], "x")


async def test_forum_topics_and_group_messages(fake: FakeTelegram, bot: Bot) -> None:
    group = fake.group_chat(-100777, "Forum", forum=True)
    ann = fake.add_user(1, "Ann")
    topic = fake.forum_topic(group, "Questions", user=ann)
    asked = fake.user_message(
        group, ann, "@gptalk_test_bot hi", thread_id=topic, is_topic_message=True
    )
    # Telegram sets reply_to_message to the topic's creation message
    assert asked["reply_to_message"]["message_id"] == topic
    assert "forum_topic_created" in asked["reply_to_message"]
    answer = await bot.send_message(
        group["id"], "hello", reply_parameters=ReplyParameters(message_id=asked["message_id"])
    )
    assert answer.message_thread_id == topic  # inherited from the replied message
    assert answer.is_topic_message
    follow_up = fake.user_message(
        group, ann, "thanks", thread_id=topic, is_topic_message=True, reply_to=answer.message_id
    )
    assert follow_up["reply_to_message"]["from"]["id"] == fake.bot_user["id"]
    updates = await bot.get_updates()
    assert [u.message.text for u in updates if u.message] == [None, "@gptalk_test_bot hi", "thanks"]


async def test_visible_text_of_a_long_answer(make_fake: MakeFake, make_bot: MakeBot) -> None:
    fake = await make_fake(enforce_limits=False)
    bot = make_bot(fake)
    user, chat_id = _user_and_chat(fake)
    chat = fake.private_chat(user)
    q1 = fake.user_message(chat, user, "long please")["message_id"]
    first = await bot.send_message(chat_id, "…", reply_parameters=ReplyParameters(message_id=q1))
    await bot.edit_message_text("part one ", chat_id=chat_id, message_id=first.message_id)
    await bot.send_message(chat_id, "part two")
    q2 = fake.user_message(chat, user, "next")["message_id"]
    await bot.send_message(chat_id, "other", reply_parameters=ReplyParameters(message_id=q2))
    assert fake.visible_text(chat_id, q1) == "part onepart two"  # Telegram trimmed "part one "
    assert fake.visible_text(chat_id, q2) == "other"
    assert fake.visible_text(chat_id, 999) == ""


async def test_inline_keyboard_counts_as_content(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Stop", callback_data="stop")]]
    )
    sent = await bot.send_message(chat_id, "working", reply_markup=keyboard)
    assert sent.reply_markup is not None
    # same text, keyboard removed: a real change
    await bot.edit_message_text("working", chat_id=chat_id, message_id=sent.message_id)
    assert fake.message(chat_id, sent.message_id).reply_markup is None
    bad = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="x", callback_data="d" * 65)]]
    )
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(chat_id, "x", reply_markup=bad)


async def test_raw_http_encodings(fake: FakeTelegram, bot: Bot) -> None:
    _, chat_id = _user_and_chat(fake)
    base = f"{fake.url}/bot{fake.token}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/GETME") as resp:  # case-insensitive, GET
            assert (await resp.json())["result"]["username"] == "gptalk_test_bot"
        async with http.post(
            f"{base}/sendMessage",
            json={
                "chat_id": chat_id,
                "text": "json",
                "entities": [{"type": "bold", "offset": 0, "length": 4}],
            },
        ) as resp:
            assert (await resp.json())["result"]["entities"][0]["type"] == "bold"
        form = aiohttp.FormData()
        form.add_field("chat_id", str(chat_id))
        form.add_field("text", "multipart")
        form.add_field("document", b"abc", filename="a.txt")  # forces multipart
        async with http.post(f"{base}/sendMessage", data=form) as resp:
            assert (await resp.json())["result"]["text"] == "multipart"
        async with http.get(
            f"{base}/sendMessage", params={"chat_id": chat_id, "text": "q"}
        ) as resp:
            assert (await resp.json())["ok"] is True
        async with http.post(f"{base}/sendPhoto", data={"chat_id": str(chat_id)}) as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{fake.url}/bot1:wrong/getMe") as resp:
            assert resp.status == 401
            assert (await resp.json())["description"] == "Unauthorized"
    assert [m.text for m in fake.bot_messages(chat_id)] == ["json", "multipart", "q"]
    wrong = Bot("1:wrong", session=_PlainHttpSession(api=TelegramAPIServer.from_base(fake.url)))
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await wrong.get_me()
    finally:
        await wrong.session.close()
    assert [c.method for c in fake.calls if not c.ok] == ["sendPhoto", "getMe", "getMe"]


async def test_close_wakes_pending_long_poll(make_bot: MakeBot) -> None:
    fake = FakeTelegram()
    await fake.start()
    bot = make_bot(fake)
    poll = asyncio.create_task(bot.get_updates(timeout=50))
    await fake.wait_for(lambda: fake.long_poll_pending)
    started = time.monotonic()
    await asyncio.wait_for(fake.close(), 3)
    assert await asyncio.wait_for(poll, 3) == []
    assert time.monotonic() - started < 3


async def test_dispatcher_echo_bot(fake: FakeTelegram) -> None:
    # aiogram's own AiohttpSession here; start_polling closes it when polling stops
    bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.url)))
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.reply(message.text or "?")

    user, chat_id = _user_and_chat(fake)
    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=1))
    question = fake.user_message(fake.private_chat(user), user, "echo me")
    await fake.wait_for(lambda: len(fake.bot_messages(chat_id)) == 1, timeout=5)
    reply = fake.bot_messages(chat_id)[0]
    assert reply.text == "echo me"
    assert reply.reply_to == question["message_id"]
    assert fake.visible_text(chat_id, question["message_id"]) == "echo me"
    await dp.stop_polling()
    await asyncio.wait_for(polling, 5)
    # the cancelled request's long poll ended with it: a restarted bot gets no 409
    await fake.wait_for(lambda: not fake.long_poll_pending, timeout=2)
    assert polling.done()
    assert polling.exception() is None
    assert fake.calls_to("getUpdates")[0].params["allowed_updates"] == ["message"]
    assert not [c for c in fake.calls if not c.ok]
    await bot.session.close()  # already closed by start_polling: a no-op
