"""Model services behind one small protocol: GPTalk, any OpenAI-compatible API, and
the fallback between them. Nothing here knows about Telegram."""

from .base import (
    LLM,
    Provider,
    ProviderAuthError,
    ProviderCutOff,
    ProviderError,
    ProviderStorageError,
    ProviderTimeout,
    ProviderTruncated,
    ProviderUnavailable,
    ProviderUnreadable,
    service_name,
)
from .fallback import FallbackLLM
from .notices import notice_for

__all__ = [
    "LLM",
    "FallbackLLM",
    "Provider",
    "ProviderAuthError",
    "ProviderCutOff",
    "ProviderError",
    "ProviderStorageError",
    "ProviderTimeout",
    "ProviderTruncated",
    "ProviderUnavailable",
    "ProviderUnreadable",
    "notice_for",
    "service_name",
]
