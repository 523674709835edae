"""Configuration contract (design.md): variable names, defaults, validation, secrecy, ``.env``."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import AnyUrl, SecretStr, ValidationError

from bot.config import ConfigError, Settings, load_settings, secrets_of, unknown_variables

TOKEN = "123456789:AAE-s3cretT0kenValue_xyz"
SECRET_PART = "s3cretT0kenValue"

# Every variable of design.md's table that Settings reads today.
VARIABLES = (
    "BOT_TOKEN",
    "TELEGRAM_API_URL",
    "REDIS_URL",
    "REDIS_PREFIX",
    "GPTALK_URL",
    "GPTALK_MODEL",
    "GPTALK_PROXY",
    "GPTALK_MAX_USES",
    "GPTALK_CONNECT_TIMEOUT",
    "GPTALK_READ_TIMEOUT",
    "SYSTEM_PROMPT",
    "ADMIN_IDS",
    "ALLOWED_USER_IDS",
    "EDIT_INTERVAL",
    "GROUP_EDIT_INTERVAL",
    "HISTORY_MAX_MESSAGES",
    "HISTORY_TTL",
    "PROMPT_MAX_CHARS",
    "USER_RATE_LIMIT",
    "SHUTDOWN_TIMEOUT",
    "MERGE_WINDOW",
    "PASTE_MAX_PARTS",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "WEBHOOK_HOST",
    "WEBHOOK_PORT",
    "DROP_PENDING_UPDATES",
    "HEALTH_PORT",
    "HEALTH_HOST",
    "LOG_FORMAT",
    "REPLICA_ID",
    "LOG_LEVEL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray variables from the real environment, no stray ``.env`` file."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    return TOKEN


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """Set ``env`` and return the text of the ConfigError that load_settings raises."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


def test_defaults(token: str) -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.bot_token.get_secret_value() == TOKEN
    assert settings.telegram_api_url in (None, "https://api.telegram.org")
    assert settings.redis_url is None
    assert settings.redis_prefix == "gptalk"
    assert settings.gptalk_url == "https://gptalk.net"
    assert settings.gptalk_model == "gpt-3.5-turbo"
    assert settings.gptalk_proxy is None
    assert settings.gptalk_max_uses == 5
    assert settings.gptalk_connect_timeout == 10
    assert settings.gptalk_read_timeout == 60
    assert settings.system_prompt == ""
    assert settings.admin_ids == frozenset()
    assert settings.allowed_user_ids == frozenset()
    assert settings.edit_interval == 1.0
    assert settings.group_edit_interval == 3.0
    assert settings.history_max_messages == 20
    assert settings.history_ttl == 604800
    assert settings.prompt_max_chars == 12000
    assert settings.user_rate_limit == 10
    assert settings.shutdown_timeout == 30
    assert settings.merge_window == 1.5
    assert settings.paste_max_parts == 8
    assert settings.log_level == "INFO"


def test_every_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    env = {
        "TELEGRAM_API_URL": "http://127.0.0.1:8081",
        "REDIS_URL": "redis://localhost:6379/2",
        "REDIS_PREFIX": "bot2",
        "GPTALK_URL": "http://127.0.0.1:9000",
        "GPTALK_MODEL": "gpt-4",
        "GPTALK_PROXY": "http://proxy:3128",
        "GPTALK_MAX_USES": "7",
        "GPTALK_CONNECT_TIMEOUT": "2.5",
        "GPTALK_READ_TIMEOUT": "30",
        "SYSTEM_PROMPT": "Be brief.",
        "ADMIN_IDS": "1",
        "ALLOWED_USER_IDS": "2,3",
        "EDIT_INTERVAL": "0.5",
        "GROUP_EDIT_INTERVAL": "4",
        "HISTORY_MAX_MESSAGES": "8",
        "HISTORY_TTL": "60",
        "PROMPT_MAX_CHARS": "5000",
        "USER_RATE_LIMIT": "0",
        "SHUTDOWN_TIMEOUT": "0",
        "MERGE_WINDOW": "0.8",
        "PASTE_MAX_PARTS": "3",
        "LOG_LEVEL": "WARNING",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.telegram_api_url == "http://127.0.0.1:8081"
    assert settings.redis_url == "redis://localhost:6379/2"
    assert settings.redis_prefix == "bot2"
    assert settings.gptalk_url == "http://127.0.0.1:9000"
    assert settings.gptalk_model == "gpt-4"
    assert settings.gptalk_proxy == "http://proxy:3128"
    assert settings.gptalk_max_uses == 7
    assert settings.gptalk_connect_timeout == 2.5
    assert settings.gptalk_read_timeout == 30
    assert settings.system_prompt == "Be brief."
    assert settings.admin_ids == frozenset({1})
    assert settings.allowed_user_ids == frozenset({2, 3})
    assert settings.edit_interval == 0.5
    assert settings.group_edit_interval == 4
    assert settings.history_max_messages == 8
    assert settings.history_ttl == 60
    assert settings.prompt_max_chars == 5000
    assert settings.user_rate_limit == 0
    assert settings.shutdown_timeout == 0
    assert settings.merge_window == 0.8
    assert settings.paste_max_parts == 3
    assert settings.log_level == "WARNING"


def test_bot_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch)
    assert message.startswith("BOT_TOKEN: is not set")
    assert "@BotFather" in message  # where to get one
    assert ".env" in message  # and where to put it


def test_bot_token_is_secret(token: str) -> None:
    settings = load_settings()
    assert type(settings.bot_token).__name__ == "SecretStr"
    assert settings.bot_token.get_secret_value() == TOKEN
    for text in (repr(settings), str(settings), repr(settings.bot_token), str(settings.bot_token)):
        assert SECRET_PART not in text
        assert "123456789" not in text


@pytest.mark.parametrize(
    "bad_token",
    [
        f"{SECRET_PART}-no-colon",
        f"abc:{SECRET_PART}",
        f"https://api.telegram.org/bot123:{SECRET_PART}",
        f"123:{SECRET_PART} trailing words",
    ],
)
def test_invalid_bot_token_is_named_but_never_shown(
    monkeypatch: pytest.MonkeyPatch, bad_token: str
) -> None:
    monkeypatch.setenv("BOT_TOKEN", bad_token)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "BOT_TOKEN" in str(info.value)
    shown = [str(info.value), repr(info.value), *traceback.format_exception(info.value)]
    assert not any(SECRET_PART in text for text in shown)


def test_valid_token_not_shown_when_another_variable_is_bad(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("GPTALK_MAX_USES", "many")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "GPTALK_MAX_USES" in str(info.value)
    shown = [str(info.value), repr(info.value), *traceback.format_exception(info.value)]
    assert not any(SECRET_PART in text for text in shown)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", frozenset()),
        ("1, 2", frozenset({1, 2})),
        ("1,2,", frozenset({1, 2})),
        (" 42 ", frozenset({42})),
        ("-100,7", frozenset({-100, 7})),
    ],
)
@pytest.mark.parametrize("variable", ["ADMIN_IDS", "ALLOWED_USER_IDS"])
def test_id_lists(
    monkeypatch: pytest.MonkeyPatch,
    token: str,
    variable: str,
    value: str,
    expected: frozenset[int],
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), variable.lower()) == expected


@pytest.mark.parametrize("variable", ["ADMIN_IDS", "ALLOWED_USER_IDS"])
@pytest.mark.parametrize("value", ["x", "1,x", "1;2", "[1, 2]"])
def test_bad_id_list_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, token: str, variable: str, value: str
) -> None:
    message = config_error(monkeypatch, **{variable: value})
    assert variable in message
    assert variable.lower() not in message


BAD_NUMBERS = [
    ("GPTALK_MAX_USES", "abc"),
    ("GPTALK_MAX_USES", "0"),
    ("GPTALK_MAX_USES", "-1"),
    ("GPTALK_MAX_USES", "2.5"),
    ("GPTALK_CONNECT_TIMEOUT", "soon"),
    ("GPTALK_CONNECT_TIMEOUT", "0"),
    ("GPTALK_CONNECT_TIMEOUT", "-3"),
    ("GPTALK_READ_TIMEOUT", "x"),
    ("GPTALK_READ_TIMEOUT", "0"),
    ("GPTALK_READ_TIMEOUT", "-1"),
    ("EDIT_INTERVAL", "fast"),
    ("EDIT_INTERVAL", "0"),
    ("EDIT_INTERVAL", "-1"),
    ("GROUP_EDIT_INTERVAL", "slow"),
    ("GROUP_EDIT_INTERVAL", "0"),
    ("GROUP_EDIT_INTERVAL", "-0.5"),
    ("HISTORY_MAX_MESSAGES", "lots"),
    ("HISTORY_MAX_MESSAGES", "0"),
    ("HISTORY_MAX_MESSAGES", "-5"),
    ("HISTORY_TTL", "week"),
    ("HISTORY_TTL", "0"),
    ("HISTORY_TTL", "-1"),
    ("PROMPT_MAX_CHARS", "big"),
    ("PROMPT_MAX_CHARS", "0"),
    ("PROMPT_MAX_CHARS", "-1"),
    ("USER_RATE_LIMIT", "ten"),
    ("USER_RATE_LIMIT", "-1"),
    ("SHUTDOWN_TIMEOUT", "later"),
    ("SHUTDOWN_TIMEOUT", "-1"),
    ("MERGE_WINDOW", "soon"),
    ("MERGE_WINDOW", "0"),
    ("MERGE_WINDOW", "-1"),
    ("MERGE_WINDOW", "inf"),
    ("PASTE_MAX_PARTS", "many"),
    ("PASTE_MAX_PARTS", "0"),
    ("PASTE_MAX_PARTS", "-1"),
    ("PASTE_MAX_PARTS", "2.5"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_NUMBERS)
def test_bad_number_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, token: str, variable: str, value: str
) -> None:
    message = config_error(monkeypatch, **{variable: value})
    assert variable in message
    assert variable.lower() not in message  # the variable, not the field


@pytest.mark.parametrize(
    ("variable", "value"), [("USER_RATE_LIMIT", "0"), ("SHUTDOWN_TIMEOUT", "0")]
)
def test_zero_is_allowed_where_it_means_off(
    monkeypatch: pytest.MonkeyPatch, token: str, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), variable.lower()) == 0


def test_several_bad_variables_are_named_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {
        "GPTALK_MAX_USES": "0",
        "EDIT_INTERVAL": "x",
        "ADMIN_IDS": "x",
        "REDIS_URL": "http://x",
        "LOG_LEVEL": "LOUD",
    }
    message = config_error(monkeypatch, **bad)  # BOT_TOKEN missing too
    for variable in [*bad, "BOT_TOKEN"]:
        assert variable in message


def test_dotenv_file_is_read_and_unknown_variables_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        f"BOT_TOKEN={TOKEN}\n"
        "GPTALK_MODEL=from-dotenv\n"
        "ADMIN_IDS=5, 6\n"
        "SOMETHING_ELSE=whatever\n"
        "COMPOSE_PROJECT_NAME=bot\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.bot_token.get_secret_value() == TOKEN
    assert settings.gptalk_model == "from-dotenv"
    assert settings.admin_ids == frozenset({5, 6})
    assert not hasattr(settings, "something_else")


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        f"BOT_TOKEN={TOKEN}\nGPTALK_MODEL=from-dotenv\nHISTORY_TTL=99\n", encoding="utf-8"
    )
    monkeypatch.setenv("GPTALK_MODEL", "from-env")
    settings = load_settings()
    assert settings.gptalk_model == "from-env"
    assert settings.history_ttl == 99


def test_bad_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"BOT_TOKEN={TOKEN}\nHISTORY_TTL=never\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="HISTORY_TTL"):
        load_settings()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("debug", "DEBUG"), ("Info", "INFO"), (" warning ", "WARNING"), ("ERROR", "ERROR")],
)
def test_log_level_is_normalised(
    monkeypatch: pytest.MonkeyPatch, token: str, value: str, expected: str
) -> None:
    monkeypatch.setenv("LOG_LEVEL", value)
    assert load_settings().log_level == expected


def test_bad_log_level_names_the_variable(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert "LOG_LEVEL" in config_error(monkeypatch, LOG_LEVEL="verbose")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TELEGRAM_API_URL", "not a url"),
        ("TELEGRAM_API_URL", "ftp://example.org"),
        ("GPTALK_URL", "gptalk.net"),
        ("GPTALK_PROXY", "proxy:3128"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "localhost:6379"),
    ],
)
def test_bad_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, token: str, variable: str, value: str
) -> None:
    message = config_error(monkeypatch, **{variable: value})
    assert variable in message


@pytest.mark.parametrize(
    "value",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@host:6380",
        "unix:///tmp/r.sock",
        "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/1?sentinel_password=sp",
    ],
)
def test_redis_urls_accepted(monkeypatch: pytest.MonkeyPatch, token: str, value: str) -> None:
    monkeypatch.setenv("REDIS_URL", value)
    assert load_settings().redis_url == value


def test_empty_redis_url_means_unset(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings().redis_url is None


def test_telegram_api_url_trailing_slash_is_stripped(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:8081/")
    assert load_settings().telegram_api_url == "http://127.0.0.1:8081"


def test_bad_redis_prefix_names_the_variable(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert "REDIS_PREFIX" in config_error(monkeypatch, REDIS_PREFIX="has space")


def test_settings_are_frozen(token: str) -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.gptalk_model = "other"  # type: ignore[misc]


def test_webhook_url_needs_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("WEBHOOK_URL", "https://example.com/tg/hook")
    with pytest.raises(ConfigError, match=r"^WEBHOOK_SECRET: is required when WEBHOOK_URL is set$"):
        load_settings()
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret_-X")
    settings = load_settings()
    assert settings.webhook_path == "/tg/hook"
    assert (settings.webhook_host, settings.webhook_port) == ("0.0.0.0", 8080)
    assert settings.drop_pending_updates is False
    monkeypatch.setenv("WEBHOOK_URL", "")
    assert load_settings().webhook_url is None


def test_webhook_secret_must_be_what_telegram_accepts(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    message = config_error(
        monkeypatch, WEBHOOK_URL="https://example.com/hook", WEBHOOK_SECRET="has space"
    )
    assert message.startswith("WEBHOOK_SECRET: must be 1-256 characters")
    assert "has space" not in message


def test_observability_settings(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    settings = load_settings()
    assert settings.log_format == "text"
    assert settings.health_port is None
    assert settings.replica_id.endswith(f":{os.getpid()}")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("REPLICA_ID", "bot-2")
    monkeypatch.setenv("HEALTH_PORT", "9100")
    settings = load_settings()
    assert (settings.log_format, settings.replica_id, settings.health_port) == (
        "json",
        "bot-2",
        9100,
    )
    assert "LOG_FORMAT" in config_error(monkeypatch, LOG_FORMAT="xml")


def test_health_host_is_loopback_unless_set(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert load_settings().health_host == "127.0.0.1"
    for value, expected in (
        ("0.0.0.0", "0.0.0.0"),
        (" :: ", "::"),
        ("localhost", "localhost"),
        ("bot-1.internal", "bot-1.internal"),
        ("", "127.0.0.1"),  # HEALTH_HOST= as in a copied .env.example without the value
    ):
        monkeypatch.setenv("HEALTH_HOST", value)
        assert load_settings().health_host == expected, value
    for bad in ("http://0.0.0.0", "127.0.0.1:9090", "two words", "-dash.example"):
        message = config_error(monkeypatch, HEALTH_HOST=bad)
        assert message == (
            "HEALTH_HOST: must be an IP address or a host name to listen on, e.g. 0.0.0.0"
        ), bad


# --- .env.example stays in sync ------------------------------------------------------------------

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def example_variables() -> tuple[set[str], set[str]]:
    """The variables .env.example sets, and the ones it shows commented out."""
    active, commented = set(), set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        name, sep, _value = line.partition("=")
        if not sep or " " in name.removeprefix("# "):
            continue
        if name.startswith("# "):
            commented.add(name.removeprefix("# "))
        else:
            active.add(name)
    return active, commented


# design.md's variables that Settings does not read yet: shown commented out, with defaults.
PLANNED = frozenset(
    {
        "GROUP_MAX_CONCURRENT",
        "MERGE_WINDOW",
        "DEFAULT_LANGUAGE",
        "LLM_PROVIDERS",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "OPENAI_TEMPERATURE",
        "OPENAI_MAX_TOKENS",
        "OPENAI_CONNECT_TIMEOUT",
        "OPENAI_READ_TIMEOUT",
        "PROVIDER_COOLDOWN",
        "WEBHOOK_SECRET",
        "WEBHOOK_HOST",
        "WEBHOOK_PORT",
        "DROP_PENDING_UPDATES",
        "HEALTH_PORT",
        "LOG_FORMAT",
        "REPLICA_ID",
    }
)


def test_env_example_shows_every_setting() -> None:
    active, commented = example_variables()
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - active - commented == set()  # every setting the bot reads is documented
    assert PLANNED - fields - commented == set()  # and the planned ones, not yet live
    assert active - fields == set()  # and nothing it ignores looks like a live setting


def test_env_example_copied_as_is_gives_the_defaults(tmp_path: Path) -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8").replace("BOT_TOKEN=\n", f"BOT_TOKEN={TOKEN}\n")
    (tmp_path / ".env").write_text(text, encoding="utf-8")
    assert load_settings() == Settings(_env_file=None, bot_token=TOKEN)


def test_stream_mode_and_draft_interval(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert load_settings().stream_mode == "edit"
    monkeypatch.setenv("STREAM_MODE", " Draft ")
    monkeypatch.setenv("DRAFT_INTERVAL", "0.5")
    settings = load_settings()
    assert (settings.stream_mode, settings.draft_interval) == ("draft", 0.5)
    assert config_error(monkeypatch, STREAM_MODE="drafts").startswith("STREAM_MODE:")
    monkeypatch.setenv("STREAM_MODE", "edit")
    assert config_error(monkeypatch, DRAFT_INTERVAL="0").startswith("DRAFT_INTERVAL:")


# --- secrets_of: every setting that can hold a credential ---------------------------------------

NO_TEXT = object()  # a type whose values cannot hold a credential
TEXT_FREE = (bool, int, float, Path, NoneType)


def sample(annotation: Any, secret: str) -> Any:
    """A value of ``annotation`` that hides ``secret`` the way it would: as the secret
    itself, or as the password in a URL. NO_TEXT for types that hold no text."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return sample(args[0], secret)
    if origin in (Union, UnionType):
        values = [sample(arg, secret) for arg in args]
        return next((v for v in values if v is not NO_TEXT), NO_TEXT)
    if origin is Literal:
        return NO_TEXT  # a fixed choice, not the operator's text
    if origin in (tuple, list, set, frozenset):
        item = sample(args[0], secret)
        return NO_TEXT if item is NO_TEXT else origin([item])
    if annotation is SecretStr:
        return SecretStr(secret)
    url = f"http://user:{secret}@host.example:8443/path"
    if isinstance(annotation, type) and issubclass(annotation, str):
        return url
    if isinstance(annotation, type) and issubclass(annotation, AnyUrl):
        return annotation(url)
    if annotation in TEXT_FREE:
        return NO_TEXT
    raise AssertionError(f"a setting of type {annotation!r}: teach sample() whether it holds text")


def test_secrets_of_masks_every_setting_that_can_hold_a_credential() -> None:
    # Every setting that can hold text gets a password of its own: one added later
    # that secrets_of does not mask fails here.
    values = {
        name: sample(field.annotation, f"pw-{name}")
        for name, field in Settings.model_fields.items()
    }
    values = {name: value for name, value in values.items() if value is not NO_TEXT}
    assert {"bot_token", "gptalk_proxy", "openai_base_url", "telegram_api_url"} <= set(values)

    found = secrets_of(Settings.model_construct(**values))

    assert [name for name in values if f"pw-{name}" not in found] == []


def test_secrets_of_masks_the_password_of_every_configured_url(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    urls = {
        "TELEGRAM_API_URL": "http://tg:tg%40pw@127.0.0.1:8081",
        "GPTALK_URL": "https://gt:gptalk-pw@gptalk.example",
        "GPTALK_PROXY": "http://proxy-user:proxy-pw@127.0.0.1:3128",
        "OPENAI_BASE_URL": "https://gw:gateway-pw@gateway.example/v1",
        "REDIS_URL": "redis+sentinel://:master-pw@h1:26379/m?sentinel_password=sentinel-pw",
        "WEBHOOK_URL": "https://hook:hook-pw@bot.example/telegram",
    }
    for name, url in {**urls, "WEBHOOK_SECRET": "hook-secret"}.items():
        monkeypatch.setenv(name, url)

    found = secrets_of(load_settings())

    wanted = ["tg%40pw", "tg@pw", "gptalk-pw", "proxy-pw", "gateway-pw", "master-pw"]
    wanted += ["sentinel-pw", "hook-pw", "hook-secret", TOKEN, TOKEN.partition(":")[2]]
    assert [secret for secret in wanted if secret not in found] == []


# --- unknown variables that look meant for the bot ---------------------------------------------


def test_only_variables_that_look_meant_for_the_bot_are_named() -> None:
    common = ["PATH", "HOME", "LANG", "LANGUAGE", "USER", "LOGNAME", "HOSTNAME", "TERM"]
    common += ["PYTHONPATH", "HTTP_PROXY", "NO_PROXY", "XDG_RUNTIME_DIR", "LC_ALL"]
    # Other programs' own, and what Kubernetes adds for a service named redis.
    foreign = ["OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "JOURNAL_STREAM", "REDIS_SERVICE_HOST"]
    foreign += ["REDIS_SERVICE_PORT", "REDIS_PORT", "REDIS_PORT_6379_TCP_ADDR"]
    meant = {
        "ALLOWED_USERS": "ALLOWED_USER_IDS",  # the same first word
        "ADMIN_ID": "ADMIN_IDS",
        "GPTALK_PROXI": "GPTALK_PROXY",
        "LOGLEVEL": "LOG_LEVEL",  # a typo of a whole name
        "ALOWED_USER_IDS": "ALLOWED_USER_IDS",
    }
    environ = dict.fromkeys([*common, *foreign, *meant, "BOT_TOKEN", "log_format"], "1")
    environ["REDIS_PORT"] = "tcp://10.0.0.7:6379"

    warnings = unknown_variables(environ)

    assert sorted(warnings) == sorted(
        f"{name} (in the environment) is not a setting of this bot and is ignored: "
        f"did you mean {setting}?"
        for name, setting in meant.items()
    )
