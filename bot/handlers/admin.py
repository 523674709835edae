"""Admin commands (``ADMIN_IDS``): /token, /reset_token, /stats.

Answered only in private chats: in a group every member would read the answer, so
there everyone, admins too, gets the same one line pointing to the private chat
(which also keeps who is an admin to themselves). In private only messages a listed
admin sends as themselves pass: not on behalf of a chat (``sender_chat``), not
forwarded. Everyone else gets a refusal and nothing changes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiogram import F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command
from aiogram.types import BotCommand, Message

from bot.chat_admins import IsAdmin
from bot.config import Settings
from bot.i18n import Texts
from bot.lag import LagProbe
from bot.storage.stats import Stats
from gptalk import TokenStore

__all__ = ["IsAdmin", "admin_commands", "create_router"]

log = logging.getLogger(__name__)


def admin_commands(texts: Texts) -> list[BotCommand]:
    return [
        BotCommand(command="token", description=texts.cmd_token),
        BotCommand(command="reset_token", description=texts.cmd_reset_token),
        BotCommand(command="stats", description=texts.cmd_stats),
    ]


def _when(timestamp: float | None, texts: Texts) -> str:
    if timestamp is None:
        return texts.unknown_time
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def on_token(
    message: Message, token_store: TokenStore, settings: Settings, texts: Texts
) -> None:
    status = await token_store.status()
    in_use = "gptalk" in settings.llm_providers
    # The token may still be in a shared Redis, so its state is shown either way.
    note = "" if in_use else f"{texts.gptalk_unused}\n\n"
    if not status.has_token:
        await message.answer(note + (texts.no_token_login if in_use else texts.no_token))
        return
    expired = texts.token_expired if status.is_expired() else ""
    await message.answer(
        note
        + texts.token_status.format(
            obtained=_when(status.obtained_at, texts),
            expires=_when(status.expires_at, texts),
            expired=expired,
            left=status.uses_left,
            max_uses=status.max_uses,
        )
    )


async def on_reset_token(message: Message, token_store: TokenStore, texts: Texts) -> None:
    dropped = await token_store.invalidate()
    log.info("admin %s reset the GPTalk token", message.from_user and message.from_user.id)
    await message.answer(texts.token_reset if dropped else texts.token_none)


async def on_stats(
    message: Message,
    stats: Stats,
    settings: Settings,
    texts: Texts,
    lag: LagProbe | None = None,
) -> None:
    numbers = await stats.snapshot()
    providers = await stats.providers()
    lines = []
    for name in settings.llm_providers:  # in fallback order
        counts = providers.get(name, {})
        line = texts.stats_provider.format(
            name=name,
            requests=counts.get("requests", 0),
            failures=counts.get("failures", 0),
            fallbacks=counts.get("fallbacks", 0),
        )
        if counts.get("first_texts"):
            seconds = counts["first_text_ms"] / counts["first_texts"] / 1000
            line += texts.stats_first_text.format(seconds=seconds)
        lines.append(line)
    await message.answer(
        texts.stats.format(
            requests=numbers["requests"],
            failures=numbers["failures"],
            logins=numbers["logins"],
            throttled=numbers["429s"],
            active=numbers["active"],
            providers="\n".join(lines),
        )
        + _lag_line(lag, texts)
    )


def _lag_line(lag: LagProbe | None, texts: Texts) -> str:
    """This process's event-loop lag: how late its timers fire (not shared: each
    process has its own loop)."""
    shot = lag.snapshot() if lag is not None else None
    if lag is None or shot is None or not shot.samples:
        return texts.stats_lag_none
    return texts.stats_lag.format(
        window=lag.window_seconds,
        p50=shot.p50 * 1000,
        p99=shot.p99 * 1000,
        max=shot.max * 1000,
    )


async def on_refused(message: Message, texts: Texts) -> None:
    await message.reply(texts.admin_only)


async def on_not_in_private(message: Message, texts: Texts) -> None:
    await message.reply(texts.admin_private_only)


def create_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="admin")
    is_admin = IsAdmin(admin_ids)
    router.message.register(
        on_not_in_private,
        Command("token", "reset_token", "stats"),
        F.chat.type != ChatType.PRIVATE,
    )
    router.message.register(on_token, Command("token"), is_admin)
    router.message.register(on_reset_token, Command("reset_token"), is_admin)
    router.message.register(on_stats, Command("stats"), is_admin)
    router.message.register(on_refused, Command("token", "reset_token", "stats"))
    return router
