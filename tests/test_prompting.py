"""Pure helpers: the prompt budget (build_prompt), failure notices (notice_for), log redaction."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator

import pytest

from bot.answering import build_prompt
from bot.answering import notice_for as provider_notice
from bot.i18n import CATALOGS, EN, Texts
from bot.logs import RedactingFilter
from bot.providers.gptalk import provider_error
from gptalk import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    GPTalkError,
    Message,
    ProtocolError,
    StreamInterruptedError,
    format_prompt,
)


def u(content: str) -> Message:
    return Message(role="user", content=content)


def a(content: str) -> Message:
    return Message(role="assistant", content=content)


SYSTEM = "You are terse."

HISTORY = [
    u("first question " * 3),
    a("first answer " * 5),
    u("second question"),
    a("second answer " * 4),
    u("third question " * 2),
    a("third answer"),
    u("the new question"),
]


def size(messages: list[Message]) -> int:
    return len(format_prompt(messages))


# --- build_prompt ------------------------------------------------------------------------


@pytest.mark.parametrize("system", [SYSTEM, ""])
def test_everything_kept_when_it_fits(system: str) -> None:
    head = [Message(role="system", content=system)] if system else []
    budget = size([*head, *HISTORY])
    assert build_prompt(system, HISTORY, budget) == [*head, *HISTORY]
    assert build_prompt(system, HISTORY, 10**6) == [*head, *HISTORY]


def test_system_message_first() -> None:
    for budget in (1, 50, 150, 10**6):
        result = build_prompt(SYSTEM, HISTORY, budget)
        assert result[0] == Message(role="system", content=SYSTEM)
        assert [m["role"] for m in result[1:]].count("system") == 0


def test_empty_system_prompt_adds_no_message() -> None:
    assert build_prompt("", [u("hi")], 1000) == [u("hi")]


def test_oldest_turns_dropped_first() -> None:
    full = size([Message(role="system", content=SYSTEM), *HISTORY])
    result = build_prompt(SYSTEM, HISTORY, full - 1)
    # one character too many: the whole first turn (question and answer) goes
    assert result == [Message(role="system", content=SYSTEM), *HISTORY[2:]]


def test_only_the_new_message_when_nothing_else_fits() -> None:
    system = Message(role="system", content=SYSTEM)
    budget = size([system, HISTORY[-1]])
    assert build_prompt(SYSTEM, HISTORY, budget) == [system, HISTORY[-1]]


@pytest.mark.parametrize("system", [SYSTEM, ""])
def test_last_message_kept_even_if_alone_over_budget(system: str) -> None:
    huge = u("x" * 500)
    history = [u("old"), a("reply"), huge]
    result = build_prompt(system, history, 100)
    assert result[-1] == huge
    assert result == ([Message(role="system", content=system)] if system else []) + [huge]
    assert build_prompt(system, [huge], 10)[-1] == huge


def budgets(history: list[Message], system: str) -> Iterator[int]:
    head = [Message(role="system", content=system)] if system else []
    top = size([*head, *history]) + 5
    yield from range(0, top, 3)


@pytest.mark.parametrize("system", [SYSTEM, ""])
@pytest.mark.parametrize(
    "history",
    [
        HISTORY,
        # group chats: several users in a row, uneven turns
        [u("Ann: hi"), u("Bob: hello"), a("Hi both " * 6), u("Ann: more"), a("ok"), u("Bob: ?")],
        [u("q1"), a("long " * 40), u("q2"), a("a" * 3), u("q3")],
        [u("only one")],
    ],
    ids=["turns", "group", "long-answer", "single"],
)
def test_invariants_for_every_budget(system: str, history: list[Message]) -> None:
    head = [Message(role="system", content=system)] if system else []
    for budget in budgets(history, system):
        result = build_prompt(system, history, budget)
        assert result[: len(head)] == head
        kept = result[len(head) :]
        # a suffix of the history that ends with the new message
        assert kept, budget
        assert kept == history[len(history) - len(kept) :], budget
        assert kept[-1] == history[-1]
        if len(kept) < len(history):  # something was dropped
            assert kept[0]["role"] != "assistant", budget
        if len(kept) > 1:
            assert size(result) <= budget, budget
        # maximal: no longer suffix starting with a user message would have fit
        for start in range(len(history) - len(kept)):
            longer = history[start:]
            if longer[0]["role"] == "user":
                assert size([*head, *longer]) > budget, (budget, start)


def test_does_not_mutate_history() -> None:
    history = list(HISTORY)
    snapshot = [dict(m) for m in history]
    build_prompt(SYSTEM, history, 60)
    assert [dict(m) for m in history] == snapshot


# --- notice_for --------------------------------------------------------------------------

LEAK = "SECRET-DETAIL-4711"


LANGUAGES = pytest.mark.parametrize("texts", CATALOGS.values(), ids=CATALOGS.keys())


def notice_for(error: GPTalkError, texts: Texts = EN) -> str:
    """The notice for a GPTalk error, as the GPTalk provider reports it."""
    return provider_notice(provider_error(error), texts)


def errors() -> dict[str, list[GPTalkError]]:
    return {
        "timeout": [APITimeoutError(f"read timeout {LEAK}", endpoint="stream")],
        "interrupted": [
            StreamInterruptedError(f"stream ended early {LEAK}", received=f"partial {LEAK}")
        ],
        "unavailable": [
            APIStatusError(f"HTTP 502 {LEAK}", status=502, body=f"<html>{LEAK}", endpoint="submit"),
            APIConnectionError(f"cannot connect {LEAK}", endpoint="login"),
            AuthenticationError(f"HTTP 401 {LEAK}", status=401, body=LEAK, endpoint="login"),
        ],
        "protocol": [ProtocolError(f"no data {LEAK}", excerpt=f"{{{LEAK}", endpoint="submit")],
    }


@LANGUAGES
def test_notices_are_distinct_per_kind(texts: Texts) -> None:
    by_kind = {kind: {notice_for(e, texts) for e in errs} for kind, errs in errors().items()}
    for kind, notices in by_kind.items():
        assert len(notices) == 1, kind  # one notice per kind
    texts = [next(iter(notices)) for notices in by_kind.values()]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    "error",
    [
        *itertools.chain.from_iterable(errors().values()),
        GPTalkError(f"something {LEAK}"),
    ],
    ids=lambda error: type(error).__name__,
)
@LANGUAGES
def test_notice_is_short_markdown_without_exception_text(error: GPTalkError, texts: Texts) -> None:
    notice = notice_for(error, texts)
    assert notice.strip()
    assert len(notice) <= 200
    assert LEAK not in notice
    assert str(error) not in notice
    assert type(error).__name__ not in notice
    assert "Traceback" not in notice
    # balanced Markdown markers, so it renders and does not break the answer before it
    assert notice.count("_") % 2 == 0
    assert notice.count("*") % 2 == 0
    assert notice.count("`") % 2 == 0


@LANGUAGES
def test_notice_starts_a_new_paragraph(texts: Texts) -> None:
    """Notices are appended to the text so far: they must not glue onto its last word."""
    for errs in errors().values():
        for error in errs:
            assert notice_for(error, texts).startswith("\n")


# --- RedactingFilter ---------------------------------------------------------------------

_counter = itertools.count()


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(["hunter2-secret", ""]))
    logger = logging.getLogger(f"tests.redact.{next(_counter)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


SECRETS = ("hunter2-secret", "streamtok123", "bearertok456", "987654321", "AAE-xyz_Q")
DIRTY = (
    "GET https://gptalk.net/api/chatgpt/chatapi/stream?token=streamtok123&x=1 failed; "
    "Authorization: Bearer bearertok456; "
    "POST https://api.telegram.org/bot987654321:AAE-xyz_Q/sendMessage; "
    "password hunter2-secret"
)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def test_masks_the_message(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning(DIRTY)
    text = stream.getvalue()
    assert_clean(text)
    assert "token=***" in text
    assert "&x=1" in text
    assert "Bearer ***" in text
    assert "/bot***/sendMessage" in text
    assert "https://api.telegram.org" in text


def test_masks_percent_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("request %s failed after %d tries (%s)", DIRTY, 3, "hunter2-secret")
    text = stream.getvalue()
    assert_clean(text)
    assert "after 3 tries" in text


def test_masks_secret_split_across_format_and_args(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.error("url=%s?token=%s", "https://host/stream", "streamtok123")
    logger.error("%s/bot%s:%s/getMe", "https://api.telegram.org", 987654321, "AAE-xyz_Q")
    assert_clean(stream.getvalue())


def test_masks_exception_traceback(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    def fail() -> None:
        try:
            raise ConnectionError(f"low level: {DIRTY}")
        except ConnectionError as exc:
            raise RuntimeError("request to https://x/y?token=streamtok123 failed") from exc

    try:
        fail()
    except RuntimeError:
        logger.exception("call failed with %s", "Bearer bearertok456")
    text = stream.getvalue()
    assert_clean(text)
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError" in text
    assert "ConnectionError" in text
    assert "call failed with Bearer ***" in text


def test_masks_exc_info_passed_explicitly(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError(f"bad {DIRTY}")
    except ValueError as exc:
        error = exc
    logger.warning("not the current exception", exc_info=error)
    text = stream.getvalue()
    assert_clean(text)
    assert "ValueError" in text


def test_filter_on_the_logger_also_masks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(f"tests.redact.{next(_counter)}")
    redactor = RedactingFilter(["hunter2-secret"])
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("x %s", DIRTY)
    finally:
        logger.removeFilter(redactor)
    assert caplog.records
    assert_clean(caplog.text)


def test_urls_are_named_without_their_userinfo(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    # Passwords nobody told the filter about: aiohttp quoting a proxy's URL, a user
    # name that is a token, a password with an "@" in it.
    logger, stream = captured
    logger.warning(
        "login failed: 407, message='Proxy Authentication Required', url='%s'; then %s and %s",
        "http://puser:unlisted-pw@127.0.0.1:3128",
        "https://unlisted-token@gw.example/v1",
        "redis://:p@ss-unlisted@[::1]:6379/0 (mail ops@example.org)",
    )
    text = stream.getvalue()
    assert "unlisted" not in text
    assert "puser" not in text
    assert (
        "url='http://127.0.0.1:3128'; then https://gw.example/v1 and redis://[::1]:6379/0" in text
    )
    assert "(mail ops@example.org)" in text  # not a URL: left alone


def test_clean_text_is_unchanged(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("answered in chat %s: %d chars, token count %s", -100123, 42, "n/a")
    assert stream.getvalue() == "INFO answered in chat -100123: 42 chars, token count n/a\n"


def test_bad_format_args_do_not_raise_into_the_caller(
    captured: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    """stdlib logging never raises into application code for a malformed call; the filter
    must not change that, nor leak a secret from the arguments (not even via the
    "--- Logging error ---" report that Handler.handleError prints on stderr)."""
    logger, stream = captured
    logger.warning("%d items from %s", "many", DIRTY)  # must not raise TypeError
    logger.info("after")
    text = stream.getvalue()
    assert "after" in text
    assert_clean(text)
    assert_clean(capsys.readouterr().err)
