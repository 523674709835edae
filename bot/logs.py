"""Logging set-up: text or JSON lines, and secrets masked in every record."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from gptalk.urls import without_userinfo

__all__ = ["JsonFormatter", "RedactingFilter", "log_context", "redact", "setup_logging"]

# What the current update is about (chat, conversation, update id): set by the
# dispatcher's outer middleware, copied into every task the handler starts.
log_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)
# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# GPTalk stream tokens travel in URLs (?token=…), bearer tokens in headers.
_PATTERNS = (
    re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE),
    re.compile(r"(/bot)\d+:[\w-]+"),  # Bot API URLs carry the bot token
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets and anything token-shaped masked, and every URL
    in it without its ``user:password@`` (libraries quote proxy and base URLs whole)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1***", text)
    return without_userinfo(text)


class RedactingFilter(logging.Filter):
    """Masks the given secrets and anything token-shaped in log records.

    A last line of defence: code should not log secrets in the first place, but
    library exceptions (aiohttp's among them) put request URLs in their messages.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a wrong log call must not break the caller
            message = f"{record.msg} (bad log arguments: {record.args!r})"
        message = self._clean(message)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now, cleaned, so handlers print this text.
            formatter = logging.Formatter()
            record.exc_text = self._clean(formatter.formatException(record.exc_info))
            record.exc_info = None
        record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, replica, the update's
    context (chat, conversation) and whatever the call passed in ``extra=``."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": self._replica,
            **log_context.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    level: str, *, secrets: Iterable[str] = (), fmt: str = "text", replica: str = ""
) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(replica))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
