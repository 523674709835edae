"""The bot's texts in English and Russian, chosen by the sender's Telegram language.

The model's answers are not translated; everything around them is.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, get_args

from .en import EN
from .ru import RU
from .texts import Language, Texts

__all__ = ["CATALOGS", "EN", "LANGUAGES", "RU", "Language", "Texts", "language_of", "texts_for"]

LANGUAGES: Final[tuple[Language, ...]] = get_args(Language)
CATALOGS: Final[Mapping[Language, Texts]] = MappingProxyType({"en": EN, "ru": RU})


def language_of(language_code: str | None, default: Language) -> Language:
    """``ru*`` → Russian, ``en*`` → English (``en-GB``, ``ru-RU`` too); anything
    else, or no code (Telegram omits it for some users), → ``default``."""
    code = (language_code or "").strip().lower()
    for language in LANGUAGES:
        if code.startswith(language):
            return language
    return default


def texts_for(language_code: str | None, default: Language) -> Texts:
    return CATALOGS[language_of(language_code, default)]
