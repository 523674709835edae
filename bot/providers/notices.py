"""The notice that ends an answer a provider cut short (Markdown, shown in the chat)."""

from __future__ import annotations

from bot.i18n import Texts

from .base import (
    ProviderAuthError,
    ProviderCutOff,
    ProviderError,
    ProviderStorageError,
    ProviderTimeout,
    ProviderTruncated,
    ProviderUnavailable,
)

__all__ = ["notice_for"]


def _sentence(name: str) -> str:
    return name[:1].upper() + name[1:]


def notice_for(error: ProviderError, texts: Texts) -> str:
    """A short, readable notice for ``error``, in the language of ``texts``: never
    its text, which is for logs."""
    # GPTalk is a name; anything else is a description, said in the user's language.
    name = error.service if error.service == "GPTalk" else texts.the_model_service
    if isinstance(error, ProviderTimeout):
        template = texts.notice_timeout
    elif isinstance(error, ProviderStorageError):
        template = texts.notice_storage
    elif isinstance(error, ProviderTruncated):
        filtered = error.reason == "content_filter"
        why = texts.truncated_by_filter if filtered else texts.truncated_by_length
        return texts.notice_truncated.format(service=name, Service=_sentence(name), why=why)
    elif isinstance(error, ProviderCutOff):
        template = texts.notice_cut_off
    elif isinstance(error, ProviderAuthError):
        template = texts.notice_auth
    elif isinstance(error, ProviderUnavailable):
        template = texts.notice_unavailable
    else:
        template = texts.notice_unreadable
    return template.format(service=name, Service=_sentence(name))
