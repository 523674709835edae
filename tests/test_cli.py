"""The CLI (``python -m gptalk``) run as a real subprocess against the in-process fake.

The fake GPTalk serves from the test's own event loop, so every subprocess is driven
with ``asyncio.create_subprocess_exec`` and awaited; a blocking ``subprocess.run``
would freeze the fake and deadlock the test.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.fake_gptalk import DEFAULT_ANSWER, Endpoint, FakeGPTalk

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0  # a hung CLI fails its test instead of hanging the session


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """The ambient environment without GPTALK_*/REDIS_* variables, plus ``extra``.

    PYTHONUNBUFFERED is dropped too: the CLI must flush its output itself.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GPTALK_", "REDIS_")) and key != "PYTHONUNBUFFERED"
    }
    env.update(extra)
    return env


async def start_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bool = False
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gptalk",
        *args,
        cwd=ROOT,
        env=env if env is not None else cli_env(),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, stdin: bytes | None = None) -> CliResult:
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the CLI did not finish within {RUN_TIMEOUT} s")
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode("utf-8"), err.decode("utf-8"))


async def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> CliResult:
    proc = await start_cli(*args, env=env, stdin=stdin is not None)
    return await finish(proc, stdin)


def closed_port_url(scheme: str) -> str:
    """A URL on 127.0.0.1 whose port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"


def assert_one_error_line(result: CliResult, fake: FakeGPTalk | None = None) -> str:
    """Exit 1, exactly one ``gptalk: error:`` line on stderr, no traceback, no token."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    assert lines[0].startswith("gptalk: error:"), lines[0]
    if fake is not None:
        for token in fake.issued_tokens() + fake.issued_stream_tokens():
            assert token not in result.stderr
            assert token not in result.stdout
    return lines[0]


def assert_usage_error(result: CliResult) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert "error:" in result.stderr


# ---------------------------------------------------------------------- success


async def test_prompt_streams_answer_to_stdout(fake_gptalk: FakeGPTalk) -> None:
    result = await run_cli("hi", "--url", fake_gptalk.url)

    assert result == CliResult(0, DEFAULT_ANSWER + "\n", "")
    assert fake_gptalk.prompts == ["hi"]


async def test_several_words_are_joined_into_one_prompt(fake_gptalk: FakeGPTalk) -> None:
    result = await run_cli("--url", fake_gptalk.url, "Write", "a", "poem")

    assert result.returncode == 0, result
    assert fake_gptalk.prompts == ["Write a poem"]


async def test_dash_reads_the_prompt_from_stdin(fake_gptalk: FakeGPTalk) -> None:
    text = "Напиши стихотворение 🍂\nabout «autumn», naïve café — 日本語\n\nthird line\n"

    result = await run_cli("-", "--url", fake_gptalk.url, stdin=text.encode("utf-8"))

    assert result == CliResult(0, DEFAULT_ANSWER + "\n", "")
    assert fake_gptalk.prompts == [text]


async def test_env_defaults_and_model_option(fake_gptalk: FakeGPTalk) -> None:
    env = cli_env(GPTALK_URL=fake_gptalk.url, GPTALK_MODEL="env-model")

    from_env = await run_cli("hi", env=env)
    overridden = await run_cli("hello", "--model", "flag-model", env=env)

    assert from_env == CliResult(0, DEFAULT_ANSWER + "\n", "")
    assert overridden == CliResult(0, DEFAULT_ANSWER + "\n", "")
    bodies = [r.json for r in fake_gptalk.requests_to("submit")]
    assert [(b["content"], b["model"]) for b in bodies if isinstance(b, dict)] == [
        ("hi", "env-model"),
        ("hello", "flag-model"),
    ]


async def test_output_is_streamed_incrementally(fake_gptalk: FakeGPTalk) -> None:
    answer = "alpha beta gamma delta epsilon"  # 4 data lines of 8 chars
    fake_gptalk.answer = answer
    fake_gptalk.chunk_size = 8
    fake_gptalk.delay = 0.2  # before every line but the first: >= 0.6 s after the first
    chunks = math.ceil(len(answer) / fake_gptalk.chunk_size)

    proc = await start_cli("hi", "--url", fake_gptalk.url)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.read(4096), RUN_TIMEOUT)
        first_at = time.monotonic()
        assert proc.returncode is None  # text arrived while the CLI was still running
        assert first
        assert answer.startswith(first.decode("utf-8"))
        assert len(first) < len(answer)
        rest = await asyncio.wait_for(proc.stdout.read(), RUN_TIMEOUT)
        rest_at = time.monotonic()
        result = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert result.returncode == 0, result
    assert result.stderr == ""
    assert (first + rest).decode("utf-8") == answer + "\n"
    # The rest needed the fake's remaining delays: the first piece was not held back.
    assert rest_at - first_at >= 0.5 * (chunks - 1) * fake_gptalk.delay


# ---------------------------------------------------------------------- request errors


async def test_http_500_on_submit(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("submit", status=500)

    result = await run_cli("hi", "--url", fake_gptalk.url)

    line = assert_one_error_line(result, fake_gptalk)
    assert "500" in line
    assert result.stdout == ""
    assert fake_gptalk.issued_tokens()  # a token was issued, and is not on stderr


async def test_http_500_on_stream(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", status=500)

    result = await run_cli("hi", "--url", fake_gptalk.url)

    line = assert_one_error_line(result, fake_gptalk)
    assert "500" in line
    assert fake_gptalk.issued_stream_tokens()


async def test_unreachable_url() -> None:
    result = await run_cli("hi", "--url", closed_port_url("http"))

    assert_one_error_line(result)
    assert result.stdout == ""


@pytest.mark.parametrize("endpoint", ["submit", "stream"])
async def test_stalled_answer_times_out(fake_gptalk: FakeGPTalk, endpoint: Endpoint) -> None:
    fake_gptalk.fail(endpoint, stall=10)
    env = cli_env(GPTALK_URL=fake_gptalk.url, GPTALK_READ_TIMEOUT="0.5")

    started = time.monotonic()
    result = await run_cli("hi", env=env)

    line = assert_one_error_line(result, fake_gptalk)
    assert re.search(r"time[sd]? ?out", line, re.IGNORECASE), line
    assert time.monotonic() - started < 8  # the 0.5 s read timeout, not the 10 s stall


async def test_stream_cut_midway_keeps_partial_output(fake_gptalk: FakeGPTalk) -> None:
    fake_gptalk.fail("stream", cut_after=2)

    result = await run_cli("hi", "--url", fake_gptalk.url)

    assert_one_error_line(result, fake_gptalk)
    assert result.stdout == DEFAULT_ANSWER[: 2 * fake_gptalk.chunk_size]


@pytest.mark.parametrize(
    ("args", "env_extra", "named"),
    [
        # aiohttp's error for a refusing proxy quotes the proxy's URL whole.
        pytest.param(["--url", "https://gptalk.invalid"], {}, "407", id="proxy-refuses"),
        pytest.param([], {"GPTALK_PROXY": "u:PROXYPW@127.0.0.1:1"}, "GPTALK_PROXY", id="no-scheme"),
        pytest.param([], {"GPTALK_PROXY": "http://u:PROXYPW@[::1"}, "GPTALK_PROXY", id="bad-host"),
        pytest.param(["--url", "ftp://u:PROXYPW@h"], {}, "GPTALK_URL", id="url-not-http"),
    ],
)
async def test_url_credentials_are_never_shown(
    refusing_proxy: str, args: list[str], env_extra: dict[str, str], named: str
) -> None:
    env = cli_env(**{"GPTALK_PROXY": f"http://u:PROXYPW@{refusing_proxy}", **env_extra})

    result = await run_cli("hi", *args, env=env)

    assert "PROXYPW" not in result.stdout + result.stderr
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr, result.stderr
    assert named in result.stderr
    if named == "407":  # the proxy is named, without its userinfo
        assert f"url='http://{refusing_proxy}'" in result.stderr


# ---------------------------------------------------------------------- usage errors


async def test_no_arguments_is_a_usage_error() -> None:
    result = await run_cli()

    assert_usage_error(result)
    assert "prompt" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        pytest.param(["   "], None, id="whitespace-argument"),
        pytest.param(["", ""], None, id="empty-arguments"),
        pytest.param(["-"], b" \n\t\n", id="whitespace-stdin"),
    ],
)
async def test_empty_prompt_is_a_usage_error(
    fake_gptalk: FakeGPTalk, args: list[str], stdin: bytes | None
) -> None:
    result = await run_cli(*args, "--url", fake_gptalk.url, stdin=stdin)

    assert_usage_error(result)
    assert "empty" in result.stderr
    assert fake_gptalk.requests == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPTALK_MAX_USES", "abc"),
        ("GPTALK_MAX_USES", "0"),
        ("GPTALK_MAX_USES", "2.5"),
        ("GPTALK_READ_TIMEOUT", "-1"),
        ("GPTALK_READ_TIMEOUT", "nan"),
        ("GPTALK_CONNECT_TIMEOUT", "0"),
        # A non-finite timeout must be refused up front too: aiohttp cannot schedule it.
        ("GPTALK_READ_TIMEOUT", "inf"),
        ("GPTALK_CONNECT_TIMEOUT", "1e400"),
    ],
)
async def test_invalid_env_value_is_a_usage_error(
    fake_gptalk: FakeGPTalk, name: str, value: str
) -> None:
    result = await run_cli("hi", env=cli_env(GPTALK_URL=fake_gptalk.url, **{name: value}))

    assert_usage_error(result)
    assert name in result.stderr
    assert fake_gptalk.requests == []


@pytest.mark.parametrize(
    ("args", "env_extra", "named"),
    [
        pytest.param(["--redis-url", "not-a-url"], {}, "redis", id="option"),
        pytest.param([], {"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", id="env"),
        pytest.param([], {"REDIS_URL": "redis+sentinel://h1:26379"}, "REDIS_URL", id="sentinel"),
    ],
)
async def test_malformed_redis_url_is_a_usage_error(
    fake_gptalk: FakeGPTalk, args: list[str], env_extra: dict[str, str], named: str
) -> None:
    env = cli_env(GPTALK_URL=fake_gptalk.url, **env_extra)

    result = await run_cli("hi", *args, env=env)

    assert_usage_error(result)
    assert named.lower() in result.stderr.lower()
    assert fake_gptalk.requests == []


# ---------------------------------------------------------------------- shared token in Redis


async def test_processes_share_one_token_through_redis(
    fake_gptalk: FakeGPTalk, redis: aioredis.Redis, redis_url: str
) -> None:
    count = 12
    env = cli_env(GPTALK_URL=fake_gptalk.url, REDIS_URL=redis_url, REDIS_PREFIX="clitest")

    procs = [await start_cli(f"prompt {i}", env=env) for i in range(count)]
    results = await asyncio.gather(*(finish(proc) for proc in procs))

    for result in results:
        assert result == CliResult(0, DEFAULT_ANSWER + "\n", "")
    assert sorted(fake_gptalk.prompts) == sorted(f"prompt {i}" for i in range(count))
    assert fake_gptalk.logins == math.ceil(count / fake_gptalk.max_uses) == 3
    assert max(fake_gptalk.token_uses.values()) <= fake_gptalk.max_uses
    assert sum(fake_gptalk.token_uses.values()) == count
    assert fake_gptalk.spent_rejections == 0
    assert await redis.exists("clitest:auth") == 1
    assert await redis.exists("gptalk:auth") == 0  # REDIS_PREFIX was honoured


async def test_unreachable_redis(fake_gptalk: FakeGPTalk) -> None:
    result = await run_cli(
        "hi", "--url", fake_gptalk.url, "--redis-url", closed_port_url("redis") + "/0"
    )

    line = assert_one_error_line(result, fake_gptalk)
    assert "redis" in line.lower()
    assert result.stdout == ""
