"""The notice that ends an answer a provider cut short (Markdown, shown in the chat)."""

from __future__ import annotations

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


def notice_for(error: ProviderError) -> str:
    """A short, readable notice for ``error``: never its text, which is for logs."""
    name = error.service
    if isinstance(error, ProviderTimeout):
        text = (
            f"⚠️ _{_sentence(name)} stopped responding, so the answer is incomplete. "
            "Send /retry to try again._"
        )
    elif isinstance(error, ProviderStorageError):
        text = "⚠️ _I'm temporarily unavailable (storage is down). Send /retry in a minute._"
    elif isinstance(error, ProviderTruncated):
        why = "its content filter" if error.reason == "content_filter" else "its length limit"
        text = f"✂️ _The answer was cut by {name} ({why})._"
    elif isinstance(error, ProviderCutOff):
        text = f"⚠️ _The answer was cut off by {name}. Send /retry to try again._"
    elif isinstance(error, ProviderAuthError):
        text = (
            f"⚠️ _{_sentence(name)} refused the bot's credentials, so I cannot answer. "
            "Please tell the bot's admin; /retry once it is fixed._"
        )
    elif isinstance(error, ProviderUnavailable):
        text = f"⚠️ _{_sentence(name)} is unavailable right now. Send /retry in a minute._"
    else:
        text = f"⚠️ _{_sentence(name)} sent an answer I could not read. Send /retry to try again._"
    return "\n\n" + text
