"""English and Russian: the catalogs, and what users see end to end in each language."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import string
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.config import ConfigError, load_settings
from bot.delivery.render import render
from bot.dispatcher import set_commands
from bot.i18n import CATALOGS, EN, LANGUAGES, RU, Texts, language_of
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

TOKEN = "123456:test-token"
KEYS = [f.name for f in dataclasses.fields(Texts) if f.name != "language"]
GROUP_ID = -100321
BOT = "@gptalk_test_bot"  # the fake's default bot username


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


# --- the catalogs ------------------------------------------------------------------------------


def test_there_is_a_catalog_for_every_language() -> None:
    assert set(CATALOGS) == set(LANGUAGES) == {"en", "ru"}
    assert all(texts.language == language for language, texts in CATALOGS.items())


@pytest.mark.parametrize("key", KEYS)
def test_every_key_is_in_both_languages(key: str) -> None:
    english, russian = getattr(EN, key), getattr(RU, key)
    for text in (english, russian):
        assert isinstance(text, str), key
        assert text.strip(), key
    assert placeholders(russian) == placeholders(english), key
    if english.startswith("\n\n"):  # ends an answer, rendered as Markdown with it
        for text in (english, russian):
            assert text.startswith("\n\n"), key
            assert text.count("_") % 2 == 0, key
            assert text.count("*") % 2 == 0, key
            assert render(text).text == render(text.replace("_", "")).text, key


def test_the_languages_differ() -> None:
    same = [key for key in KEYS if getattr(EN, key) == getattr(RU, key)]
    assert same == []


@pytest.mark.parametrize(
    ("code", "default", "expected"),
    [
        ("ru", "en", "ru"),
        ("ru-RU", "en", "ru"),
        ("RU", "en", "ru"),
        ("en", "ru", "en"),
        ("en-GB", "ru", "en"),
        ("de", "en", "en"),
        ("de", "ru", "ru"),
        ("uk", "ru", "ru"),
        ("", "ru", "ru"),
        (None, "ru", "ru"),
        (None, "en", "en"),
    ],
)
def test_language_of(code: str | None, default: Any, expected: str) -> None:
    assert language_of(code, default) == expected


def test_default_language_is_validated_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(_env_file=None, bot_token=TOKEN).default_language == "en"
    monkeypatch.setenv("DEFAULT_LANGUAGE", " RU ")
    assert load_settings(_env_file=None, bot_token=TOKEN).default_language == "ru"
    monkeypatch.setenv("DEFAULT_LANGUAGE", "de")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, bot_token=TOKEN)
    assert str(caught.value) == "DEFAULT_LANGUAGE: must be en or ru"


# --- end to end ----------------------------------------------------------------------------------


def person(harness: BotHarness, language_code: str | None, user_id: int = 1001) -> dict[str, Any]:
    return harness.tg.add_user(user_id, "Ann", language_code=language_code)


def help_of(texts: Texts) -> str:
    return texts.help.format(service="GPTalk")  # LLM_PROVIDERS=gptalk


@pytest.mark.parametrize(
    ("code", "language"), [("ru", "ru"), ("ru-RU", "ru"), ("en", "en"), ("en-GB", "en")]
)
async def test_start_and_help_follow_the_senders_language(
    make_bot: BotFactory, code: str, language: Any
) -> None:
    texts = CATALOGS[language]
    harness = await make_bot()
    ann = person(harness, code)
    harness.say(ann, "/start")
    harness.say(ann, "/help")
    await harness.settle()
    got = sorted(m.text for m in harness.tg.bot_messages(ann["id"]))  # handled concurrently
    assert got == sorted([texts.start.format(name="Ann", help=help_of(texts)), help_of(texts)])


@pytest.mark.parametrize(("code", "language"), [("de", "ru"), (None, "ru"), ("en", "en")])
async def test_default_language_for_everyone_else(
    make_bot: BotFactory, code: str | None, language: Any
) -> None:
    expected = CATALOGS[language]
    harness = await make_bot(default_language="ru")
    ann = person(harness, code)
    harness.say(ann, "/help")
    await harness.settle()
    assert [m.text for m in harness.tg.bot_messages(ann["id"])] == [help_of(expected)]


@pytest.mark.parametrize("language", LANGUAGES)
async def test_admin_refusal(make_bot: BotFactory, language: Any) -> None:
    code, texts = language, CATALOGS[language]
    harness = await make_bot(admin_ids=frozenset({9}))
    stats = harness.say(person(harness, code), "/stats")
    await harness.settle()
    assert harness.replies(stats) == [texts.admin_only]


async def test_busy_notice_in_russian(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    fake_gptalk.chunk_size, fake_gptalk.delay = 30, 0.3  # ~2 s per answer
    harness = await make_bot()
    ann = person(harness, "ru")
    questions = [harness.say(ann, f"q{i}") for i in range(5)]  # 1 running + 3 waiting + 1
    await harness.settle(within=60)
    assert harness.replies(questions[4]) == [RU.busy]
    assert fake_gptalk.submits == 4


async def test_stop_marker_in_russian(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk, redis: aioredis.Redis
) -> None:
    fake_gptalk.answer = "слово " * 400
    fake_gptalk.chunk_size, fake_gptalk.delay = 5, 0.05
    harness = await make_bot()
    ann = person(harness, "ru")
    question = harness.say(ann, "говори")
    await tg.wait_for(lambda: bool(tg.bot_messages(ann["id"])))
    await asyncio.sleep(0.5)
    harness.say(ann, "/stop")
    await harness.settle()
    assert harness.answer(question).endswith(render(RU.stopped).text)
    assert harness.answer(question).endswith("⏹ Остановлено.")
    stored = [json.loads(x) for x in await redis.lrange(f"gptalk:history:{ann['id']}", 0, -1)]
    assert stored[-1]["content"].endswith(RU.stopped)


async def test_in_a_group_the_end_of_an_answer_follows_the_asker(
    make_bot: BotFactory, tg: FakeTelegram, fake_gptalk: FakeGPTalk
) -> None:
    """An English admin stops a Russian user's answer: the marker is Russian."""
    harness = await make_bot(admin_ids=frozenset({9}))
    group = tg.group_chat(GROUP_ID, "Клуб")
    ann, boss = person(harness, "ru", 1), tg.add_user(9, "Boss", language_code="en")
    fake_gptalk.answer = "слово " * 400
    fake_gptalk.chunk_size, fake_gptalk.delay = 5, 0.05
    text = f"{BOT} говори"
    mention = [{"type": "mention", "offset": 0, "length": len(BOT)}]
    question = harness.say(ann, text, chat=group, entities=mention)
    await tg.wait_for(lambda: bool(harness.replies(question)))
    [answer] = [m for m in tg.bot_messages(GROUP_ID) if m.reply_to == question["message_id"]]
    stop = [{"type": "bot_command", "offset": 0, "length": 5}]
    harness.say(boss, "/stop", chat=group, entities=stop, reply_to=answer.message_id)
    await harness.settle()
    assert harness.answer(question).endswith("⏹ Остановлено.")


@pytest.mark.parametrize("default", LANGUAGES)
async def test_command_menus_per_language(
    make_bot: BotFactory, tg: FakeTelegram, default: Any
) -> None:
    harness = await make_bot(admin_ids=frozenset({7}), default_language=default)
    assert harness.app is not None
    tg.private_chat(tg.add_user(7, "Root"))
    await set_commands(harness.app.bot, frozenset({7}), default)

    def descriptions(scope: str) -> list[str]:
        return [c["description"] for c in tg.commands[scope]]

    for suffix, texts in [("", CATALOGS[default]), ("/en", EN), ("/ru", RU)]:
        private = [texts.cmd_new, texts.cmd_stop, texts.cmd_retry, texts.cmd_help]
        admin = [texts.cmd_token, texts.cmd_reset_token, texts.cmd_stats]
        assert descriptions(f"all_private_chats{suffix}") == private
        assert descriptions(f"all_group_chats{suffix}") == [texts.cmd_ask, *private]
        assert descriptions(f"chat:7{suffix}") == [*private, *admin]
    assert len(tg.commands) == 9
