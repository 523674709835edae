"""ChatAdmins: who administers a chat, asked of the (fake) Bot API through a real aiogram Bot.

The end-to-end behaviour (/new in groups) is in test_bot_groups.py; here, the cache's
lifetime on a hand-moved clock, and failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message

from bot.chat_admins import ADMIN_TTL, ChatAdmins, ChatAdminsUnavailableError
from tests.fake_telegram import BAD_GATEWAY_HTML, FakeTelegram

GROUP = -100800
OTHER_GROUP = -100801


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=TelegramAPIServer.from_base(tg.url)))
    yield bot
    await bot.session.close()


def checks(tg: FakeTelegram) -> list[tuple[Any, Any]]:
    return [(c.params["chat_id"], c.params["user_id"]) for c in tg.calls_to("getChatMember")]


async def test_an_answer_is_kept_a_minute_per_chat_and_user(tg: FakeTelegram, bot: Bot) -> None:
    clock = Clock()
    admins = ChatAdmins(clock=clock)
    group, other = tg.group_chat(GROUP, "Team"), tg.group_chat(OTHER_GROUP, "Other")
    ann, bob, cat = tg.add_user(1, "Ann"), tg.add_user(2, "Bob"), tg.add_user(3, "Cat")
    tg.set_member(group, ann, "administrator")
    tg.set_member(group, bob, "member")
    tg.set_member(group, cat, "creator")
    tg.set_member(other, ann, "member")

    assert await admins.is_admin(bot, GROUP, 1) is True
    assert await admins.is_admin(bot, GROUP, 2) is False
    assert await admins.is_admin(bot, GROUP, 3) is True
    assert await admins.is_admin(bot, OTHER_GROUP, 1) is False  # per chat
    assert len(checks(tg)) == 4

    # Demoted and promoted: noticed once the minute is over, not before.
    tg.set_member(group, ann, "member")
    tg.set_member(group, bob, "administrator")
    clock.now += ADMIN_TTL - 1
    assert await admins.is_admin(bot, GROUP, 1) is True
    assert await admins.is_admin(bot, GROUP, 2) is False
    assert len(checks(tg)) == 4
    clock.now += 1
    assert await admins.is_admin(bot, GROUP, 1) is False
    assert await admins.is_admin(bot, GROUP, 2) is True
    assert checks(tg)[4:] == [(GROUP, 1), (GROUP, 2)]


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (
            {"error_code": 502, "description": "Bad Gateway", "html": BAD_GATEWAY_HTML},
            "not a Bot API",
        ),
        ({"error_code": 500, "description": "Internal Server Error"}, "Internal Server Error"),
        ({"error_code": 403, "description": "Forbidden: bot was kicked"}, "kicked"),
    ],
    ids=["proxy page", "500", "403"],
)
async def test_a_failed_check_raises_and_is_not_kept(
    fault: dict[str, Any], said: str, tg: FakeTelegram, bot: Bot
) -> None:
    admins = ChatAdmins()
    tg.set_member(tg.group_chat(GROUP, "Team"), tg.add_user(1, "Ann"), "creator")
    tg.fail_next("getChatMember", **fault)
    with pytest.raises(ChatAdminsUnavailableError) as info:
        await admins.is_admin(bot, GROUP, 1)
    assert said in str(info.value)
    assert "<html>" not in str(info.value)  # a proxy's page is not for the logs
    assert await admins.is_admin(bot, GROUP, 1) is True  # asked again
    assert len(checks(tg)) == 2


async def test_a_user_telegram_does_not_know_fails_the_check(tg: FakeTelegram, bot: Bot) -> None:
    tg.group_chat(GROUP, "Team")
    with pytest.raises(ChatAdminsUnavailableError, match="user not found"):
        await ChatAdmins().is_admin(bot, GROUP, 4242)


async def test_who_sent_a_message(tg: FakeTelegram, bot: Bot) -> None:
    """Private chats and messages written as a chat need no call; a person's does."""
    admins = ChatAdmins()
    group = tg.group_chat(GROUP, "Team")
    ann, bob = tg.add_user(1, "Ann"), tg.add_user(2, "Bob")
    tg.set_member(group, ann, "administrator")
    anonymous = tg.add_user(1087968824, "Group", username="GroupAnonymousBot", is_bot=True)
    channel_bot = tg.add_user(136817688, "Channel", username="Channel_Bot", is_bot=True)
    channel = {"id": -100555, "type": "channel", "title": "News"}
    tg.user_message(tg.private_chat(bob), bob, "/new")
    tg.user_message(group, anonymous, "/new", sender_chat=group)
    tg.user_message(group, channel_bot, "/new", sender_chat=channel)
    tg.user_message(group, ann, "/new")
    tg.user_message(group, bob, "/new")
    messages: list[Message] = []
    for update in await bot.get_updates():
        assert update.message is not None
        messages.append(update.message)

    verdicts = [await admins.sent_by_admin(bot, message) for message in messages]
    assert verdicts == [True, True, False, True, False]
    assert checks(tg) == [(GROUP, 1), (GROUP, 2)]
