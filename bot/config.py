"""Settings of the bot, read once at startup from the environment and ``.env``.

The variable names are a public interface (design.md): each field is named after
its variable, and validation errors name the variable, not the field.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, DotEnvSettingsSource, NoDecode, SettingsConfigDict

from bot.i18n import LANGUAGES, Language
from gptalk import DEFAULT_BASE_URL, DEFAULT_MODEL
from gptalk.redis_url import check_redis_url
from gptalk.urls import check_http_url, url_secrets

__all__ = ["ConfigError", "Settings", "load_settings", "secrets_of", "unknown_variables"]

IdSet = Annotated[frozenset[int], NoDecode]
NameList = Annotated[tuple[str, ...], NoDecode]
# An empty variable (`OPENAI_MAX_TOKENS=` in .env) means unset, not an invalid number.
EmptyIsNone = BeforeValidator(lambda v: None if isinstance(v, str) and not v.strip() else v)
PROVIDERS = ("gptalk", "openai")
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# The first thing a new operator sees: say where a token comes from and where it goes.
NO_BOT_TOKEN = (
    "is not set: get a token from @BotFather (https://t.me/BotFather) and put "
    "BOT_TOKEN=… in .env (copy .env.example) or in the environment"
)


class ConfigError(Exception):
    """Invalid configuration; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    bot_token: SecretStr
    telegram_api_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = Field("gptalk", pattern=r"^[A-Za-z0-9_.\-]+$")

    gptalk_url: str = DEFAULT_BASE_URL
    gptalk_model: str = DEFAULT_MODEL
    gptalk_proxy: str | None = None
    gptalk_max_uses: int = Field(5, ge=1)
    gptalk_connect_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)
    gptalk_read_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)

    # Providers: the order is the fallback order (bot/providers/fallback.py).
    llm_providers: NameList = ("gptalk",)
    openai_base_url: str = OPENAI_DEFAULT_BASE_URL
    openai_api_key: SecretStr = SecretStr("")
    openai_model: str | None = Field(None, validate_default=True)
    openai_temperature: Annotated[float | None, EmptyIsNone] = Field(
        None, ge=0, le=2, allow_inf_nan=False
    )
    openai_max_tokens: Annotated[int | None, EmptyIsNone] = Field(None, ge=1)
    openai_connect_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)
    openai_read_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    provider_cooldown: float = Field(30.0, ge=0, allow_inf_nan=False)

    system_prompt: str = ""
    admin_ids: IdSet = frozenset()
    allowed_user_ids: IdSet = frozenset()

    edit_interval: float = Field(1.0, gt=0, allow_inf_nan=False)
    group_edit_interval: float = Field(3.0, gt=0, allow_inf_nan=False)
    # TEST ONLY: real seconds per Telegram second (0.1: Telegram's windows pass 10×
    # faster), for tests of real processes against a fake Bot API with a fast clock.
    telegram_time_scale: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    history_max_messages: int = Field(20, ge=2)
    history_ttl: int = Field(604800, ge=1)
    prompt_max_chars: int = Field(12000, ge=100)
    user_rate_limit: int = Field(10, ge=0)
    group_max_concurrent: int = Field(5, ge=1)
    shutdown_timeout: float = Field(30.0, ge=0, allow_inf_nan=False)
    merge_window: float = Field(1.5, gt=0, allow_inf_nan=False)
    paste_max_parts: int = Field(8, ge=1)
    # Test-only: seconds a silent process still counts as alive, so that the crash
    # tests need not wait the production lease out (bot/delivery/journal.py).
    journal_lease: float = Field(15.0, ge=0.3, le=3600, allow_inf_nan=False)
    default_language: Language = "en"
    stream_mode: Literal["edit", "draft"] = "edit"
    draft_interval: float = Field(1.0, gt=0, allow_inf_nan=False)
    log_level: LogLevel = "INFO"
    heartbeat_file: Annotated[Path | None, BeforeValidator(lambda v: v or None)] = None

    # Transport: webhook mode when WEBHOOK_URL is set (bot/transport/), else long polling.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(8080, ge=1, le=65535)
    drop_pending_updates: bool = False
    health_port: Annotated[int | None, EmptyIsNone] = Field(None, ge=1, le=65535)
    # Loopback by default: the health listener may say more than the public should see
    # (/metrics); a container that is probed from outside sets 0.0.0.0 (the image does).
    health_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None
            if value is not None and not value.startswith(("http://", "https://")):
                raise ValueError("must be the public https:// URL Telegram calls")
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None
            # Telegram's own rule for secret_token; anything else fails at setWebhook.
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
                raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("health_host", mode="before")
    @classmethod
    def _health_host(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or "127.0.0.1"
            if not _listen_host(value):
                raise ValueError("must be an IP address or a host name to listen on, e.g. 0.0.0.0")
        return value

    @field_validator("replica_id", mode="before")
    @classmethod
    def _replica_id(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return f"{socket.gethostname()}:{os.getpid()}"
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_format", "stream_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        # Without the secret anyone who finds the URL could feed the bot updates.
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET: is required when WEBHOOK_URL is set")
        return self

    @property
    def webhook_path(self) -> str:
        """The path served: the path of WEBHOOK_URL."""
        return urlsplit(self.webhook_url or "").path or "/"

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        # "123456:ABC…": catches pasting the bot's name or a URL, without echoing it.
        token = value.get_secret_value().strip()
        if not token:  # BOT_TOKEN= as copied from .env.example
            raise ValueError(NO_BOT_TOKEN)
        head, sep, tail = token.partition(":")
        if not (sep and head.isdigit() and tail and " " not in token):
            raise ValueError("must look like 123456789:ABC… (the token @BotFather gave you)")
        return SecretStr(token)

    @field_validator(
        "telegram_api_url", "gptalk_url", "gptalk_proxy", "openai_base_url", mode="before"
    )
    @classmethod
    def _http_url(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = value.strip().rstrip("/") or None
            if value is None and info.field_name == "gptalk_url":
                return DEFAULT_BASE_URL
            if value is None and info.field_name == "openai_base_url":
                return OPENAI_DEFAULT_BASE_URL
            if value is not None:
                check_http_url(value)
        return value

    @field_validator("llm_providers", mode="before")
    @classmethod
    def _providers(cls, value: Any) -> Any:
        names = [p.strip().lower() for p in value.split(",")] if isinstance(value, str) else value
        names = [name for name in names if name]
        if not names:
            raise ValueError(f"must name at least one provider ({', '.join(PROVIDERS)})")
        for name in names:
            if name not in PROVIDERS:
                raise ValueError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
        if len(set(names)) < len(names):
            raise ValueError("names a provider twice")
        return tuple(names)

    @field_validator("openai_model", mode="before")
    @classmethod
    def _model_when_listed(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = value.strip() or None
        if value is None and "openai" in info.data.get("llm_providers", ()):
            raise ValueError("is required when LLM_PROVIDERS lists openai")
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None
            if value is not None:
                check_redis_url(value)
        return value

    @field_validator("admin_ids", "allowed_user_ids", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> Any:
        # "1, 2", "1,2," and "" are all fine.
        if isinstance(value, str):
            try:
                return frozenset(int(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError("must be comma-separated numeric user ids") from None
        return value

    @field_validator("default_language", mode="before")
    @classmethod
    def _language(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in LANGUAGES:
                raise ValueError(f"must be {' or '.join(LANGUAGES)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


def _listen_host(value: str) -> bool:
    """An address or a host name, checked now: a URL or a host:port pasted here would
    otherwise fail only when the listener opens, as a resolver error."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
        return len(value) <= 253 and re.fullmatch(rf"{label}(\.{label})*\.?", value) is not None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one readable line per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            message = "is required" if error["type"] == "missing" else error["msg"]
            message = message.removeprefix("Value error, ")
            if not error["loc"]:  # a whole-model check names its variables itself
                problems.append(message)
                continue
            name = str(error["loc"][0]).upper()
            if name == "BOT_TOKEN" and error["type"] == "missing":
                message = NO_BOT_TOKEN
            problems.append(f"{name}: {message}")
        raise ConfigError("; ".join(problems)) from None


def secrets_of(settings: Settings) -> list[str]:
    """What must never be printed: every secret setting's value (the bot token, and its
    secret half on its own), and every credential inside any other setting's value
    (the passwords in REDIS_URL, GPTALK_PROXY, OPENAI_BASE_URL, TELEGRAM_API_URL…).
    It walks every field rather than a list of them, so that a setting added later is
    masked without a change here."""
    found = [settings.bot_token.get_secret_value().partition(":")[2]]
    for name in type(settings).model_fields:
        found += _secrets_in(getattr(settings, name))
    return list(dict.fromkeys(secret for secret in found if secret))


def _secrets_in(value: object) -> list[str]:
    if value is None or isinstance(value, bool | int | float):
        return []
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, SecretBytes):
        return [value.get_secret_value().decode(errors="replace")]
    if isinstance(value, Mapping):
        return [secret for item in value.values() for secret in _secrets_in(item)]
    if isinstance(value, tuple | list | set | frozenset):
        return [secret for item in value for secret in _secrets_in(item)]
    text = str(value)  # a str, or a URL or path type
    # A URL is one word (with or without its scheme); text with spaces in it, such as
    # SYSTEM_PROMPT, is read as a URL only when it starts like one.
    if any(c.isspace() for c in text) and not _SCHEME.match(text):
        return []
    return url_secrets(text)


# Variables of other programs that share a first word with a setting: the openai SDK's
# own (the bot's client reads them too), systemd's, bash's.
FOREIGN_VARIABLES = frozenset(
    {
        "OPENAI_ADMIN_KEY",
        "OPENAI_API_TYPE",
        "OPENAI_API_VERSION",
        "OPENAI_CUSTOM_HEADERS",
        "OPENAI_LOG",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_WEBHOOK_SECRET",
        "JOURNAL_STREAM",
        "PROMPT_COMMAND",
    }
)
# Kubernetes gives every pod REDIS_SERVICE_HOST, REDIS_PORT=tcp://…, REDIS_PORT_6379_TCP…
# for a service named redis (Docker's links did the same): not settings gone wrong.
_SERVICE_LINK = re.compile(r".+_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)")
# Close enough to a setting's whole name to be a typo of it (LOGLEVEL, ALOWED_USER_IDS).
_TYPO_RATIO = 0.85


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning for each variable, in ``environ`` or in ``.env``, that looks meant for
    the bot but is none of its settings, so is ignored, naming the setting it was
    probably meant to be. Never the variable's value: it may be a secret."""
    known = sorted(name.upper() for name in Settings.model_fields)
    found_in: dict[str, list[str]] = {}
    dotenv = DotEnvSettingsSource(Settings).env_vars
    for source, names in (("the environment", list(environ)), (".env", list(dotenv))):
        for name in names:
            sources = found_in.setdefault(name.upper(), [])
            if source not in sources:
                sources.append(source)
    warnings = []
    for name, sources in found_in.items():
        meant = _meant_setting(name, environ.get(name, ""), known)
        if meant is not None:
            warnings.append(
                f"{name} (in {' and in '.join(sources)}) is not a setting of this bot and "
                f"is ignored: did you mean {meant}?"
            )
    return warnings


def _meant_setting(name: str, value: str, known: list[str]) -> str | None:
    """The setting ``name`` was probably meant to be, if it looks meant for the bot: it
    shares its first word with one (ALLOWED_USERS), or is a typo of one (LOGLEVEL)."""
    if name in known or name in FOREIGN_VARIABLES or _SERVICE_LINK.fullmatch(name):
        return None
    if name.endswith("_PORT") and value.startswith(("tcp://", "udp://")):
        return None  # Kubernetes's too
    head, underscore, _rest = name.partition("_")
    related = [setting for setting in known if underscore and setting.startswith(head + "_")]
    if related:
        return difflib.get_close_matches(name, related, n=1, cutoff=0)[0]
    typos = difflib.get_close_matches(name, known, n=1, cutoff=_TYPO_RATIO)
    return typos[0] if typos else None
