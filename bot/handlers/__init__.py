"""One router per feature, in the order they must see updates (catch-all last)."""

from __future__ import annotations

from aiogram import Router

from . import chat, commands, errors

__all__ = ["routers"]


def routers() -> list[Router]:
    """Fresh routers (a router can belong to one dispatcher only)."""
    return [errors.create_router(), commands.create_router(), chat.create_router()]
