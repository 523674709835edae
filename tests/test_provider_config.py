"""Provider settings: LLM_PROVIDERS, OPENAI_*, PROVIDER_COOLDOWN — defaults, parsing, and
the one-line exit 2 of ``python -m bot`` when they are wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from tests.bot_process import CONFIG_VARIABLES, bot_env, start_bot
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

TOKEN = "123456789:AAE-s3cretT0kenValue_xyz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)  # no stray .env


def error_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.llm_providers == ("gptalk",)
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.openai_api_key.get_secret_value() == ""
    assert settings.openai_model is None
    assert settings.openai_temperature is None
    assert settings.openai_max_tokens is None
    assert settings.openai_connect_timeout == 10
    assert settings.openai_read_timeout == 60
    assert settings.provider_cooldown == 30


def test_every_provider_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LLM_PROVIDERS": " OpenAI , gptalk ",
        "OPENAI_BASE_URL": "http://localhost:11434/v1/",
        "OPENAI_API_KEY": "sk-or-v1-abc",
        "OPENAI_MODEL": "llama3.2",
        "OPENAI_TEMPERATURE": "0.7",
        "OPENAI_MAX_TOKENS": "512",
        "OPENAI_CONNECT_TIMEOUT": "3",
        "OPENAI_READ_TIMEOUT": "90",
        "PROVIDER_COOLDOWN": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.llm_providers == ("openai", "gptalk")
    assert settings.openai_base_url == "http://localhost:11434/v1"
    assert settings.openai_api_key.get_secret_value() == "sk-or-v1-abc"
    assert "sk-or-v1-abc" not in repr(settings)
    assert settings.openai_model == "llama3.2"
    assert settings.openai_temperature == 0.7
    assert settings.openai_max_tokens == 512
    assert settings.openai_connect_timeout == 3
    assert settings.openai_read_timeout == 90
    assert settings.provider_cooldown == 0


def test_empty_optional_numbers_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_TEMPERATURE", "")
    monkeypatch.setenv("OPENAI_MAX_TOKENS", " ")
    settings = load_settings()
    assert settings.openai_temperature is None
    assert settings.openai_max_tokens is None


def test_a_base_url_without_v1_is_accepted() -> None:
    # Documented, not enforced: some compatible servers live elsewhere.
    settings = load_settings(llm_providers="openai", openai_model="m", openai_base_url="http://h:1")
    assert settings.openai_base_url == "http://h:1"


@pytest.mark.parametrize(
    ("env", "variable", "phrase"),
    [
        ({"LLM_PROVIDERS": "openai"}, "OPENAI_MODEL", "required"),
        ({"LLM_PROVIDERS": "gptalk, openai", "OPENAI_MODEL": " "}, "OPENAI_MODEL", "required"),
        ({"LLM_PROVIDERS": "gptalk,claude"}, "LLM_PROVIDERS", "unknown provider 'claude'"),
        ({"LLM_PROVIDERS": ","}, "LLM_PROVIDERS", "at least one"),
        ({"LLM_PROVIDERS": "openai,openai", "OPENAI_MODEL": "m"}, "LLM_PROVIDERS", "twice"),
        ({"OPENAI_BASE_URL": "localhost:11434/v1"}, "OPENAI_BASE_URL", "http"),
        ({"OPENAI_TEMPERATURE": "hot"}, "OPENAI_TEMPERATURE", ""),
        ({"OPENAI_MAX_TOKENS": "0"}, "OPENAI_MAX_TOKENS", ""),
        ({"OPENAI_READ_TIMEOUT": "0"}, "OPENAI_READ_TIMEOUT", ""),
        ({"PROVIDER_COOLDOWN": "-1"}, "PROVIDER_COOLDOWN", ""),
    ],
)
def test_bad_provider_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, phrase: str
) -> None:
    message = error_for(monkeypatch, **env)
    assert message.startswith(f"{variable}: ")
    assert phrase in message


def test_the_api_key_is_never_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(
        monkeypatch, OPENAI_API_KEY="sk-secret-value-99", LLM_PROVIDERS="openai,nope"
    )
    assert "sk-secret-value-99" not in message


@pytest.mark.parametrize(
    ("variable", "env"),
    [
        ("OPENAI_MODEL", {"LLM_PROVIDERS": "openai"}),
        ("LLM_PROVIDERS", {"LLM_PROVIDERS": "gptalk,ollama"}),
        ("OPENAI_BASE_URL", {"OPENAI_BASE_URL": "ftp://models.example/v1"}),
    ],
)
async def test_python_m_bot_exits_2_with_one_line(
    tg: FakeTelegram, fake_gptalk: FakeGPTalk, tmp_path: Path, variable: str, env: dict[str, str]
) -> None:
    proc = await start_bot(bot_env(tg, fake_gptalk, **env), tmp_path)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    [line] = err.decode().strip().splitlines()
    assert variable in line
    assert tg.calls == []  # stopped before talking to anyone
