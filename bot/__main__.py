"""``python -m bot``: the composition root.

Settings → logging → Redis (or in-process stores) → GPTalk client → Telegram bot
session with the rate limiter → dispatcher → long polling; everything closed on
the way out. Exit status: 0 after a clean shutdown, 2 for invalid configuration,
1 when a dependency (Redis, Telegram) is unusable at startup.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramUnauthorizedError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.answering import Answerer
from bot.config import ConfigError, Settings, load_settings
from bot.dispatcher import create_dispatcher, set_commands
from bot.logs import setup_logging
from bot.ratelimit import Limiters, RateLimitMiddleware, TelegramLimits
from bot.storage.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore
from bot.storage.keys import Keys
from gptalk import GPTalkClient, MemoryTokenStore, RedisTokenStore, TokenStore

log = logging.getLogger("bot")


class StartupError(Exception):
    """A dependency is unusable at startup; the message is the one line to print."""


async def connect_redis(url: str) -> Redis:
    # Timeouts: a hung Redis must not hang the answers that are streaming.
    redis = Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise StartupError(f"REDIS_URL: cannot reach Redis ({exc})") from None
    return redis


def telegram_session(settings: Settings, limiters: Limiters) -> AiohttpSession:
    api = (
        TelegramAPIServer.from_base(settings.telegram_api_url)
        if settings.telegram_api_url
        else None
    )
    session = AiohttpSession(api=api) if api else AiohttpSession()
    session.middleware(RateLimitMiddleware(limiters))
    return session


async def run(settings: Settings) -> None:
    keys = Keys(settings.redis_prefix)
    redis: Redis | None = None
    history: HistoryStore
    token_store: TokenStore
    if settings.redis_url:
        redis = await connect_redis(settings.redis_url)
        history = RedisHistoryStore(
            redis, keys, max_messages=settings.history_max_messages, ttl=settings.history_ttl
        )
        token_store = RedisTokenStore(redis, prefix=settings.redis_prefix)
    else:
        log.warning(
            "REDIS_URL is not set: history and the GPTalk token live in this process only "
            "(not shared with other processes, lost on restart)"
        )
        history = MemoryHistoryStore(
            max_messages=settings.history_max_messages, ttl=settings.history_ttl
        )
        token_store = MemoryTokenStore()

    llm = GPTalkClient(
        base_url=settings.gptalk_url,
        model=settings.gptalk_model,
        proxy=settings.gptalk_proxy,
        connect_timeout=settings.gptalk_connect_timeout,
        read_timeout=settings.gptalk_read_timeout,
        max_uses=settings.gptalk_max_uses,
        token_store=token_store,
    )
    limiters = Limiters(
        TelegramLimits(
            edit_interval=settings.edit_interval, group_edit_interval=settings.group_edit_interval
        )
    )
    bot = Bot(
        settings.bot_token.get_secret_value(),
        session=telegram_session(settings, limiters),
        default=DefaultBotProperties(link_preview_is_disabled=True),
    )
    answerer = Answerer(
        llm=llm,
        history=history,
        limiters=limiters,
        system_prompt=settings.system_prompt,
        prompt_max_chars=settings.prompt_max_chars,
    )
    dp = create_dispatcher(
        answerer=answerer, shutdown_timeout=settings.shutdown_timeout, settings=settings
    )
    try:
        try:
            me = await bot.get_me()
            await bot.delete_webhook()  # long polling and a webhook exclude each other
            await set_commands(bot)
        except TelegramUnauthorizedError:
            raise StartupError("BOT_TOKEN: Telegram rejected the token") from None
        except (TelegramNetworkError, TelegramAPIError) as exc:
            raise StartupError(f"cannot reach the Telegram Bot API: {exc}") from None
        log.info("starting as @%s (id %s), long polling", me.username, me.id)
        await dp.start_polling(
            bot, allowed_updates=dp.resolve_used_update_types(), handle_signals=True
        )
    finally:
        await bot.session.close()
        await llm.close()
        if redis is not None:
            await redis.aclose()
    log.info("stopped")


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gptalk-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, secrets=[settings.bot_token.get_secret_value()])
    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        print(f"gptalk-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
