"""Privacy (design.md): prompts and answers are never logged at INFO or above — not by
the bot, not by aiogram, not inside an exception's text or traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from bot.delivery.render import render
from gptalk import Message
from tests.conftest import BotFactory
from tests.fake_gptalk import FakeGPTalk, Fault
from tests.fake_telegram import FakeTelegram

PROMPT_MARK = "Zanzibar-prompt-7f3a"
ANSWER_MARK = "Quokka-answer-9c2e"
BOT = "@gptalk_test_bot"


def leaks(caplog: pytest.LogCaptureFixture, *marks: str) -> list[str]:
    """Records at INFO or above whose full text (message and traceback) shows a mark."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    shown = [formatter.format(r) for r in caplog.records if r.levelno >= logging.INFO]
    return [text for text in shown if any(mark in text for mark in marks)]


class BrokenProvider:
    """A provider with a bug: some text, then a plain exception (not a GPTalkError)."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        yield self.text
        raise RuntimeError("provider bug: unexpected payload shape")


async def test_prompts_and_answers_stay_out_of_info_logs(
    make_bot: BotFactory,
    tg: FakeTelegram,
    fake_gptalk: FakeGPTalk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    harness = await make_bot()
    ann = harness.user(1, "Ann")

    # A plain conversation, in private and in a group.
    fake_gptalk.answer = f"Here is **{ANSWER_MARK}** for you."
    asked = harness.say(ann, f"tell me about {PROMPT_MARK}")
    group = tg.group_chat(-100_700, "Team")
    mention = [{"type": "mention", "offset": 0, "length": len(BOT)}]
    in_group = harness.say(ann, f"{BOT} and {PROMPT_MARK}?", chat=group, entities=mention)
    await harness.settle()
    assert ANSWER_MARK in harness.answer(asked)
    assert ANSWER_MARK in harness.answer(in_group)

    # GPTalk sends a malformed line that quotes the answer (a JSON line cut short).
    broken = b'data: {"content": "Here is ' + ANSWER_MARK.encode() + b"\n\n"
    fake_gptalk.fail("stream", Fault(malformed_after=1, malformed_line=broken))
    unreadable = harness.say(ann, f"again about {PROMPT_MARK}")
    await harness.settle()
    assert "could not read" in harness.answer(unreadable)

    # A provider that fails with something other than a GPTalkError.
    harness.answerer.llm = BrokenProvider(f"Partial {ANSWER_MARK}")
    failed = harness.say(ann, f"last one on {PROMPT_MARK}")
    await harness.settle()
    assert ANSWER_MARK in harness.answer(failed)

    assert leaks(caplog, PROMPT_MARK, ANSWER_MARK) == []
    # The failures themselves are logged, so the test looks at the right records.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gptalk failed" in m for m in messages), messages
    assert any("provider failed" in m for m in messages), messages


@pytest.mark.parametrize("before", ["The first half of an answer", ""])
async def test_a_provider_bug_ends_the_answer_with_a_notice(
    make_bot: BotFactory, caplog: pytest.LogCaptureFixture, before: str
) -> None:
    harness = await make_bot()
    ann = harness.user(1, "Ann")
    harness.answerer.llm = BrokenProvider(before)
    asked = harness.say(ann, "hello")
    await harness.settle()  # and no error escaped to the dispatcher's error handler

    notice = "⚠️ Something went wrong while writing this answer. Send /retry to try again."
    assert harness.answer(asked) == f"{before}\n\n{notice}".strip()
    # One reply, ending with the notice: no second "something went wrong" message.
    assert harness.replies(asked) == [harness.answer(asked)]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None  # the traceback is there for the operator
    assert "hello" not in record.getMessage()
    # The next prompt is answered normally.
    harness.answerer.llm = harness.app.llm
    again = harness.say(ann, "hello again")
    await harness.settle()
    assert harness.answer(again) == render(harness.gptalk.answer).text
