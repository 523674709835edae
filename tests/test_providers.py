"""A second provider end to end: the OpenAI-compatible adapter, fallback before the first
text, the cool-down, and what users and admins see. Real bot (production factory), real
aiogram and Redis; fakes at the edges: Telegram, GPTalk and tests/fake_openai.py."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.delivery.render import render
from bot.i18n import EN
from bot.providers import (
    ProviderAuthError,
    ProviderCutOff,
    ProviderTimeout,
    ProviderTruncated,
    ProviderUnavailable,
    notice_for,
)
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk, Fault
from tests.fake_openai import FakeOpenAI
from tests.fake_telegram import FakeTelegram
from tests.test_cli import closed_port_url

KEY = "sk-test-key-0123456789abcdef"
MODEL = "test-model"
ADMIN = 4242
GPTALK_ANSWER = "GPTalk answers this one."
OPENAI_ANSWER = "The OpenAI-compatible service answers this one."
SERVICE = "the model service"  # how notices name it when several providers may answer


def notice(kind: type[Any], **kw: Any) -> str:
    return str(notice_for(kind("detail", provider="x", service=SERVICE, **kw), EN))


STOPPED_RESPONDING = notice(ProviderTimeout)
CUT_OFF = notice(ProviderCutOff)
UNAVAILABLE = notice(ProviderUnavailable)
BAD_KEY = notice(ProviderAuthError)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY, answer=OPENAI_ANSWER) as fake:
        yield fake


@pytest.fixture
def gptalk(fake_gptalk: FakeGPTalk) -> FakeGPTalk:
    fake_gptalk.answer = GPTALK_ANSWER
    return fake_gptalk


def openai_settings(fake: FakeOpenAI, providers: str, **settings: Any) -> dict[str, Any]:
    return {
        "llm_providers": providers,
        "openai_base_url": fake.base_url,
        "openai_api_key": KEY,
        "openai_model": MODEL,
        "openai_read_timeout": 0.5,
        "openai_connect_timeout": 1.0,
        "gptalk_read_timeout": 0.5,
        "gptalk_connect_timeout": 1.0,
        "admin_ids": {ADMIN},
        **settings,
    }


async def ask(harness: Any, user: dict[str, Any], text: str) -> dict[str, Any]:
    question: dict[str, Any] = harness.say(user, text)
    await harness.settle()
    return question


async def history(redis: aioredis.Redis, chat_id: int) -> list[dict[str, str]]:
    return [json.loads(raw) for raw in await redis.lrange(f"gptalk:history:{chat_id}", 0, -1)]


async def provider_stats(harness: Any) -> dict[str, dict[str, int]]:
    """What /stats tells an admin, per provider."""
    admin = harness.user(ADMIN, "Root")
    chat_id = harness.tg.private_chat(admin)["id"]
    before = len(harness.tg.bot_messages(chat_id))
    await ask(harness, admin, "/stats")
    [text] = [m.text for m in harness.tg.bot_messages(chat_id)[before:]]
    found = re.findall(r"^(\w+): (\d+) requests, (\d+) failures, (\d+) as fallback", text, re.M)
    return {
        name: {"requests": int(r), "failures": int(f), "fallbacks": int(b)}
        for name, r, f, b in found
    }


def sent_texts(tg: FakeTelegram) -> str:
    return json.dumps([call.params for call in tg.calls], ensure_ascii=False)


# --- openai alone ---------------------------------------------------------------------------


async def test_openai_alone_gets_the_conversation_as_role_messages(
    make_bot: BotFactory, tg: FakeTelegram, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply = lambda messages: f"Answer to: {messages[-1]['content']}"
    harness = await make_bot(
        **openai_settings(
            fake_openai,
            "openai",
            system_prompt="Be brief.",
            openai_temperature=0.3,
            openai_max_tokens=256,
        )
    )
    ann = harness.user(1001, "Ann")
    first = await ask(harness, ann, "What is Redis?")
    second = await ask(harness, ann, "And **Lua**?")

    assert harness.answer(first) == "Answer to: What is Redis?"
    assert harness.answer(second) == render("Answer to: And **Lua**?").text
    assert len(fake_openai.requests) == 2
    request = fake_openai.requests[1]
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is Redis?"},
        {"role": "assistant", "content": "Answer to: What is Redis?"},
        {"role": "user", "content": "And **Lua**?"},
    ]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == MODEL
    assert request.body["stream"] is True
    assert request.body["temperature"] == 0.3
    assert request.body["max_tokens"] == 256
    assert gptalk.requests == []  # GPTalk is not listed: never called

    # /help no longer claims that GPTalk answers.
    before = len(tg.bot_messages(1001))
    await ask(harness, ann, "/help")
    [help_text] = [m.text for m in tg.bot_messages(1001)[before:]]
    assert "GPTalk" not in help_text
    assert "language model" in help_text


async def test_prompt_budget_applies_to_role_messages(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "openai", prompt_max_chars=300))
    ann = harness.user(1001, "Ann")
    for n in range(6):
        await ask(harness, ann, f"Question number {n}: " + "x" * 40)
    last = fake_openai.requests[-1].messages
    assert last[-1]["content"].startswith("Question number 5")
    assert last[0]["role"] == "user"  # trimmed at a turn boundary
    assert len(last) < 11  # older turns were left out


async def test_finish_reason_length_ends_the_answer_with_a_visible_cut_notice(
    make_bot: BotFactory, redis: aioredis.Redis, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "gptalk,openai"))
    gptalk.fail("login", status=500)  # openai answers, as the fallback
    fake_openai.fail(finish_reason="length")
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Tell me everything")
    cut = notice(ProviderTruncated, reason="length")
    assert "cut" in cut
    assert harness.answer(question) == render(OPENAI_ANSWER + cut).text
    # Not a failure: the service chose to stop, so another model is not asked to start over.
    assert len(fake_openai.requests) == 1
    assert (await provider_stats(harness))["openai"]["failures"] == 0


# --- fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fault", "times"),
    [
        pytest.param("login", Fault(status=500), 1, id="login-500"),
        pytest.param("submit", Fault(status=503), 1, id="submit-503"),
        # refused again after a fresh login: GPTalk gives up
        pytest.param("submit", Fault(status=401), 2, id="token-refused"),
        pytest.param("stream", Fault(stall=3.0, after=0), 1, id="stall-before-first-chunk"),
        pytest.param("stream", Fault(cut_after=1), 1, id="cut-after-whitespace-only"),
    ],
)
async def test_gptalk_down_falls_back_to_openai(
    endpoint: Any,
    fault: Fault,
    times: int,
    make_bot: BotFactory,
    tg: FakeTelegram,
    redis: aioredis.Redis,
    gptalk: FakeGPTalk,
    fake_openai: FakeOpenAI,
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "gptalk,openai"))
    # The first data line is blank: whitespace is not text, so it does not stop the fallback.
    gptalk.answer = " " * gptalk.chunk_size + GPTALK_ANSWER
    gptalk.fail(endpoint, fault, times=times)
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Hello?")

    assert gptalk.pending_faults(endpoint) == 0  # GPTalk was tried first
    # One answer, from one model, without a notice; never a mix of two.
    assert [m.text for m in tg.bot_messages(1001)] == [OPENAI_ANSWER]
    assert tg.bot_messages(1001)[0].history[1:] in ([OPENAI_ANSWER], [])
    assert harness.answer(question) == OPENAI_ANSWER
    assert await history(redis, 1001) == [
        {"role": "user", "content": "Hello?", "asker": 1001},
        {"role": "assistant", "content": OPENAI_ANSWER, "asker": 1001},
    ]
    stats = await provider_stats(harness)
    assert stats == {
        "gptalk": {"requests": 1, "failures": 1, "fallbacks": 0},
        "openai": {"requests": 1, "failures": 0, "fallbacks": 1},
    }
    counters = await harness.answerer.stats.snapshot()
    assert counters["failures"] == 0  # the user got an answer


async def test_openai_stall_before_any_text_falls_back_to_gptalk_despite_pings(
    make_bot: BotFactory, tg: FakeTelegram, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "openai,gptalk"))
    # Role and reasoning chunks arrive, then only `: ping` comments: alive, but no text.
    fake_openai.fail(stall=3.0, after=0, reasoning=2)
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Hello?")
    assert harness.answer(question) == GPTALK_ANSWER
    assert [m.text for m in tg.bot_messages(1001)] == [GPTALK_ANSWER]
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    ("fault", "expected_notice"),
    [
        pytest.param(Fault(cut_after=2), CUT_OFF, id="cut"),
        pytest.param(Fault(stall=3.0, after=2), STOPPED_RESPONDING, id="stall"),
    ],
)
async def test_gptalk_failing_after_text_does_not_fall_back(
    fault: Fault,
    expected_notice: str,
    make_bot: BotFactory,
    redis: aioredis.Redis,
    gptalk: FakeGPTalk,
    fake_openai: FakeOpenAI,
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "gptalk,openai"))
    gptalk.fail("stream", fault)
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Hello?")

    partial = GPTALK_ANSWER[: 2 * gptalk.chunk_size]
    assert harness.answer(question) == render(partial + expected_notice).text
    assert "model service" in expected_notice  # several providers: named neutrally
    assert fake_openai.requests == []  # never stitched onto another model's text
    assert (await history(redis, 1001))[-1] == {
        "role": "assistant",
        "content": partial + expected_notice,
        "asker": 1001,
    }


# --- cool-down ------------------------------------------------------------------------------


async def test_a_failed_provider_cools_down_then_is_tried_first_again(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    cooldown = 1.5
    harness = await make_bot(
        **openai_settings(fake_openai, "gptalk,openai", provider_cooldown=cooldown)
    )
    ann = harness.user(1001, "Ann")
    gptalk.fail("login", status=500)
    failed = asyncio.get_running_loop().time()
    first = await ask(harness, ann, "one")
    assert harness.answer(first) == OPENAI_ANSWER
    gptalk_requests = len(gptalk.requests)
    assert gptalk_requests == 1

    # Within the cool-down GPTalk is skipped: not even a connection.
    second = await ask(harness, ann, "two")
    assert harness.answer(second) == OPENAI_ANSWER
    assert len(gptalk.requests) == gptalk_requests
    assert asyncio.get_running_loop().time() - failed < cooldown  # (the test's premise)

    # After it, GPTalk is first again, and answers.
    await asyncio.sleep(cooldown - (asyncio.get_running_loop().time() - failed) + 0.1)
    third = await ask(harness, ann, "three")
    assert harness.answer(third) == GPTALK_ANSWER
    assert len(fake_openai.requests) == 2
    stats = await provider_stats(harness)
    assert stats["gptalk"] == {"requests": 2, "failures": 1, "fallbacks": 0}
    assert stats["openai"] == {"requests": 2, "failures": 0, "fallbacks": 2}


async def test_a_cooling_provider_is_not_tried_even_when_the_others_fail(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "gptalk,openai", provider_cooldown=300))
    ann = harness.user(1001, "Ann")
    gptalk.fail("login", status=500)
    first = await ask(harness, ann, "one")
    assert harness.answer(first) == OPENAI_ANSWER
    gptalk_requests = len(gptalk.requests)
    fake_openai.fail(status=503)
    second = await ask(harness, ann, "two")
    # GPTalk is skipped while it cools down: the healthy provider's failure is the answer.
    assert harness.answer(second) == render(UNAVAILABLE).text
    assert len(gptalk.requests) == gptalk_requests


async def test_when_every_provider_cools_down_they_are_tried_in_order_anyway(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "gptalk,openai", provider_cooldown=300))
    ann = harness.user(1001, "Ann")
    gptalk.fail("login", status=500)
    fake_openai.fail(status=503)
    first = await ask(harness, ann, "one")
    # Both failed before any text: one notice (the last provider's), not two.
    assert harness.answer(first) == render(UNAVAILABLE).text

    second = await ask(harness, ann, "two")  # both cooling: GPTalk first, as listed
    assert harness.answer(second) == GPTALK_ANSWER
    assert len(fake_openai.requests) == 1


# --- wrong key, stall -----------------------------------------------------------------------


async def test_a_wrong_key_gives_a_clear_notice_and_never_reaches_the_logs(
    make_bot: BotFactory,
    tg: FakeTelegram,
    redis: aioredis.Redis,
    gptalk: FakeGPTalk,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "sk-wrong-Zq7Vx2Lm9Pk4Rt8Wn3"
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and the HTTP client's too
    harness = await make_bot(**openai_settings(fake_openai, "openai", openai_api_key=wrong))
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Hello?")
    await harness.stop()

    assert fake_openai.rejected_keys == 1
    assert harness.tg.visible_text(1001, question["message_id"]) == render(BAD_KEY).text
    assert "admin" in BAD_KEY
    assert "401" in caplog.text  # the admin's log says what happened…
    assert "OPENAI_API_KEY" in caplog.text
    # …without the key, or the parts of it a service echoes back.
    for fragment in (wrong, wrong[:8], wrong[-4:], KEY):
        assert fragment not in caplog.text
        assert fragment not in sent_texts(tg)
        assert fragment not in json.dumps(await history(redis, 1001))


async def test_a_password_in_the_base_url_never_reaches_the_logs(
    make_bot: BotFactory,
    tg: FakeTelegram,
    gptalk: FakeGPTalk,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The records as logged, before any filter: the provider's own message names the
    # gateway without its user and password.
    caplog.set_level(logging.DEBUG)
    unreachable = closed_port_url("http") + "/v1"
    with_password = unreachable.replace("http://", "http://gwuser:BASEURL_PW@")
    settings = openai_settings(fake_openai, "openai", openai_base_url=with_password)
    harness = await make_bot(**settings)
    question = await ask(harness, harness.user(1001, "Ann"), "Hello?")
    await harness.stop()

    assert harness.tg.visible_text(1001, question["message_id"]) == render(UNAVAILABLE).text
    assert f"openai failed: {unreachable} ({MODEL}): connection failed" in caplog.text
    for fragment in ("BASEURL_PW", "gwuser"):
        assert fragment not in caplog.text
        assert fragment not in sent_texts(tg)


async def test_a_stall_mid_stream_keeps_the_text_and_ends_with_the_notice(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "openai"))
    fake_openai.fail(stall=3.0, after=2)  # `: ping` every 0.1 s: not data
    ann = harness.user(1001, "Ann")
    question = await ask(harness, ann, "Hello?")
    partial = OPENAI_ANSWER[: 2 * fake_openai.chunk_size]
    assert harness.answer(question) == render(partial + STOPPED_RESPONDING).text
    # Two chunks, then the read timeout (0.5 s) fired long before the stall ended.
    assert fake_openai.pending_faults == 0


async def test_gptalk_alone_keeps_its_name_in_notices(
    make_bot: BotFactory, gptalk: FakeGPTalk
) -> None:
    harness = await make_bot(gptalk_read_timeout=0.5)
    gptalk.fail("submit", status=500)
    question = await ask(harness, harness.user(1001, "Ann"), "Hello?")
    assert "GPTalk is unavailable right now" in harness.answer(question)


async def test_token_says_when_gptalk_is_not_in_use(
    make_bot: BotFactory, gptalk: FakeGPTalk, fake_openai: FakeOpenAI
) -> None:
    harness = await make_bot(**openai_settings(fake_openai, "openai"))
    admin = harness.user(ADMIN, "Root")
    await ask(harness, admin, "/token")
    [text] = [m.text for m in harness.tg.bot_messages(ADMIN)]
    assert "GPTalk is not in use" in text
    assert "next request logs in" not in text  # no request will
    assert gptalk.requests == []
