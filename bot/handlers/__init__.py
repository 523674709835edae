"""One router per feature, in the order they must see updates (catch-alls last)."""

from __future__ import annotations

from aiogram import Router

from bot.handlers import admin, chat, commands, edits, errors, group, migration, rights, stop

__all__ = ["routers"]


def routers(*, admin_ids: frozenset[int]) -> list[Router]:
    """Fresh routers (a router can belong to one dispatcher only)."""
    return [
        errors.create_router(),
        migration.create_router(),
        rights.create_router(),
        admin.create_router(admin_ids),
        commands.create_router(admin_ids),
        stop.create_router(),
        edits.create_router(),
        chat.create_router(),
        group.create_router(),
    ]
