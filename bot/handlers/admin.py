"""Admin commands (``ADMIN_IDS``): /token, /reset_token, /stats.

Only messages a listed admin sends as themselves pass: not on behalf of a chat
(``sender_chat``), not forwarded. Everyone else gets a refusal and nothing changes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiogram import Router
from aiogram.filters import Command, Filter
from aiogram.types import BotCommand, Message

from bot.config import Settings
from bot.lag import LagProbe
from bot.storage.stats import Stats
from gptalk import TokenStore

__all__ = ["ADMIN_COMMANDS", "IsAdmin", "create_router"]

log = logging.getLogger(__name__)

ADMIN_COMMANDS = [
    BotCommand(command="token", description="Admin: the shared GPTalk token's state"),
    BotCommand(command="reset_token", description="Admin: force a fresh GPTalk login"),
    BotCommand(command="stats", description="Admin: usage counters"),
]
REFUSAL = "⛔ This command is for the bot's admins."


class IsAdmin(Filter):
    def __init__(self, admin_ids: frozenset[int]) -> None:
        self._admin_ids = admin_ids

    async def __call__(self, message: Message) -> bool:
        user = message.from_user
        return (
            user is not None
            and not user.is_bot
            and user.id in self._admin_ids
            and message.sender_chat is None
            and message.forward_origin is None
        )


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def on_token(message: Message, token_store: TokenStore, settings: Settings) -> None:
    status = await token_store.status()
    in_use = "gptalk" in settings.llm_providers
    # The token may still be in a shared Redis, so its state is shown either way.
    note = "" if in_use else "ℹ️ GPTalk is not in use (LLM_PROVIDERS does not list it).\n\n"
    if not status.has_token:
        later = ": the next request logs in." if in_use else "."
        await message.answer(f"{note}🔑 No GPTalk token yet{later}")
        return
    expired = " (expired)" if status.is_expired() else ""
    await message.answer(
        f"{note}🔑 Shared GPTalk token\n"
        f"Obtained: {_when(status.obtained_at)}\n"
        f"Expires: {_when(status.expires_at)}{expired}\n"
        f"Uses left: {status.uses_left} of {status.max_uses}"
    )


async def on_reset_token(message: Message, token_store: TokenStore) -> None:
    dropped = await token_store.invalidate()
    log.info("admin %s reset the GPTalk token", message.from_user and message.from_user.id)
    await message.answer(
        "✅ Token reset: the next request logs in anew."
        if dropped
        else "✅ There was no token: the next request logs in anew."
    )


async def on_stats(
    message: Message, stats: Stats, settings: Settings, lag: LagProbe | None = None
) -> None:
    numbers = await stats.snapshot()
    providers = await stats.providers()
    lines = []
    for name in settings.llm_providers:  # in fallback order
        counts = providers.get(name, {})
        line = (
            f"{name}: {counts.get('requests', 0)} requests, {counts.get('failures', 0)} "
            f"failures, {counts.get('fallbacks', 0)} as fallback"
        )
        if counts.get("first_texts"):
            line += (
                f", first text after {counts['first_text_ms'] / counts['first_texts'] / 1000:.1f} s"
            )
        lines.append(line)
    await message.answer(
        "📊 Statistics (all processes)\n"
        f"Requests: {numbers['requests']}\n"
        f"Failures: {numbers['failures']}\n"
        f"GPTalk logins: {numbers['logins']}\n"
        f"Telegram 429s: {numbers['429s']}\n"
        f"Streaming now: {numbers['active']}\n"
        f"{_lag_line(lag)}\n\n"
        "Providers, in fallback order:\n" + "\n".join(lines)
    )


def _lag_line(lag: LagProbe | None) -> str:
    """This process's event-loop lag: how late its timers fire (not shared: each
    process has its own loop)."""
    window = f"last {lag.window_seconds:.0f} s" if lag is not None else "not measured"
    shot = lag.snapshot() if lag is not None else None
    if shot is None or not shot.samples:
        return f"Event-loop lag, this process: no samples yet ({window})"
    return (
        f"Event-loop lag, this process ({window}): p50 {shot.p50 * 1000:.0f} ms, "
        f"p99 {shot.p99 * 1000:.0f} ms, max {shot.max * 1000:.0f} ms"
    )


async def on_refused(message: Message) -> None:
    await message.reply(REFUSAL)


def create_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="admin")
    is_admin = IsAdmin(admin_ids)
    router.message.register(on_token, Command("token"), is_admin)
    router.message.register(on_reset_token, Command("reset_token"), is_admin)
    router.message.register(on_stats, Command("stats"), is_admin)
    router.message.register(on_refused, Command("token", "reset_token", "stats"))
    return router
