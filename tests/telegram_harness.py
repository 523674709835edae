"""Real aiogram objects wired to the fake Bot API (shared by the bot's tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.delivery.scheduler import RateLimitMiddleware, Scheduler
from tests.fake_telegram import FakeTelegram


@contextlib.asynccontextmanager
async def make_bot(tg: FakeTelegram, scheduler: Scheduler) -> AsyncIterator[Bot]:
    """An aiogram Bot talking to ``tg``, paced by ``scheduler`` as in production."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.url))
    session.middleware(RateLimitMiddleware(scheduler))
    bot = Bot(
        tg.token, session=session, default=DefaultBotProperties(link_preview_is_disabled=True)
    )
    try:
        yield bot
    finally:
        await bot.session.close()
