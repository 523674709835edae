"""Logging set-up: one format, and secrets masked in every record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["RedactingFilter", "redact", "setup_logging"]

# GPTalk stream tokens travel in URLs (?token=…), bearer tokens in headers.
_PATTERNS = (
    re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE),
    re.compile(r"(/bot)\d+:[\w-]+"),  # Bot API URLs carry the bot token
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets and anything token-shaped masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


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


def setup_logging(level: str, *, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
