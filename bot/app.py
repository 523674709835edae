"""Building the application from settings: the composition root's object graph.

``python -m bot`` and the end-to-end tests build the bot the same way; the tests
only point the URLs at fake servers (and may run Telegram's clock faster).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.methods import (
    EditMessageText,
    GetMe,
    GetUpdates,
    SendChatAction,
    SendMessage,
    SetMyCommands,
)
from aiogram.methods.base import Response
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bot.answering import Answerer
from bot.config import Settings
from bot.delivery.budgets import MemoryBudgets, TelegramLimits
from bot.delivery.scheduler import RateLimitMiddleware, Scheduler
from bot.dispatcher import create_dispatcher
from bot.handlers.stop import stop_keyboard
from bot.paste_merger import MemoryPasteMerger
from bot.providers import FallbackLLM, Provider, service_name
from bot.providers.gptalk import GPTalkProvider
from bot.providers.openai import OpenAIProvider
from bot.storage.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore
from bot.storage.keys import Keys
from bot.storage.stats import MemoryStats, RedisStats, Stats
from bot.storage.user_limits import MemoryUserLimits, RedisUserLimits, UserLimits
from bot.unwritable import Unwritable
from gptalk import GPTalkClient, MemoryTokenStore, RedisTokenStore, TokenStore

__all__ = ["Application", "StartupError", "build_application"]

log = logging.getLogger("bot")

TELEGRAM_CONNECTIONS = 512
REDIS_CONNECTIONS = 64


class StartupError(Exception):
    """A dependency is unusable at startup; the message is the one line to print."""


@dataclass
class Application:
    settings: Settings
    bot: Bot
    dispatcher: Dispatcher
    answerer: Answerer
    llm: FallbackLLM
    scheduler: Scheduler
    redis: Redis | None
    response_models: list[Any] = field(default_factory=list)

    async def aclose(self) -> None:
        await self.scheduler.aclose()
        await self.bot.session.close()
        await self.llm.close()
        if self.redis is not None:
            await self.redis.aclose()


def pin_response_models() -> list[Any]:
    """aiogram parametrizes ``Response[...]`` for every API call and pydantic caches
    those classes only weakly, so without a reference they are rebuilt over and over
    (~20 % of the CPU under load, bench/REPORT.md). The app holds the ones it uses."""
    used = (GetUpdates, GetMe, SendMessage, EditMessageText, SendChatAction, SetMyCommands)
    return [Response.__class_getitem__(cast(Any, method.__returning__)) for method in used]


async def connect_redis(url: str) -> Redis:
    """A client whose every command is bounded in time, so that a hung or vanished
    Redis fails fast (answers already streaming finish, new prompts get a notice)."""
    pool = BlockingConnectionPool.from_url(
        url,
        # Many answers at once share the pool; when all connections are busy a
        # command waits for one (up to `timeout`) instead of failing.
        max_connections=REDIS_CONNECTIONS,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        # One quick retry (a dropped idle connection), not redis-py's default of
        # ten with backoff, which would stall every command ~4 s when Redis is down.
        retry=Retry(NoBackoff(), 1),
    )
    redis = Redis.from_pool(pool)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise StartupError(f"REDIS_URL: cannot reach Redis ({exc})") from None
    return redis


def build_providers(
    settings: Settings, token_store: TokenStore, on_login: Callable[[], Awaitable[None]]
) -> list[Provider]:
    """The providers of ``LLM_PROVIDERS``, in its order."""
    service = service_name(settings.llm_providers)
    providers: list[Provider] = []
    for name in settings.llm_providers:
        if name == "gptalk":
            client = GPTalkClient(
                base_url=settings.gptalk_url,
                model=settings.gptalk_model,
                proxy=settings.gptalk_proxy,
                connect_timeout=settings.gptalk_connect_timeout,
                read_timeout=settings.gptalk_read_timeout,
                max_uses=settings.gptalk_max_uses,
                token_store=token_store,
                on_login=on_login,
            )
            providers.append(GPTalkProvider(client, service=service))
        elif name == "openai":
            assert settings.openai_model is not None  # checked with the settings
            providers.append(
                OpenAIProvider(
                    model=settings.openai_model,
                    base_url=settings.openai_base_url,
                    api_key=settings.openai_api_key.get_secret_value(),
                    temperature=settings.openai_temperature,
                    max_tokens=settings.openai_max_tokens,
                    connect_timeout=settings.openai_connect_timeout,
                    read_timeout=settings.openai_read_timeout,
                    service=service,
                )
            )
    return providers


async def build_application(
    settings: Settings, *, limits: TelegramLimits | None = None
) -> Application:
    keys = Keys(settings.redis_prefix)
    redis: Redis | None = None
    history: HistoryStore
    token_store: TokenStore
    stats: Stats
    user_limits: UserLimits | None = None
    if settings.redis_url:
        redis = await connect_redis(settings.redis_url)
        history = RedisHistoryStore(
            redis, keys, max_messages=settings.history_max_messages, ttl=settings.history_ttl
        )
        token_store = RedisTokenStore(
            redis,
            prefix=settings.redis_prefix,
            connect_timeout=settings.gptalk_connect_timeout,
            read_timeout=settings.gptalk_read_timeout,
        )
        stats = RedisStats(redis, keys)
        if settings.user_rate_limit:
            user_limits = RedisUserLimits(redis, keys, settings.user_rate_limit)
    else:
        log.warning(
            "REDIS_URL is not set: history and the GPTalk token live in this process only "
            "(not shared with other processes, lost on restart)"
        )
        history = MemoryHistoryStore(
            max_messages=settings.history_max_messages, ttl=settings.history_ttl
        )
        token_store = MemoryTokenStore()
        stats = MemoryStats()
        if settings.user_rate_limit:
            user_limits = MemoryUserLimits(settings.user_rate_limit)

    async def count_login() -> None:
        await stats.incr("logins")

    async def count_429() -> None:
        await stats.incr("429s")

    async def count_dropped() -> None:
        await stats.incr("chatter_dropped")

    llm = FallbackLLM(
        build_providers(settings, token_store, count_login),
        cooldown=settings.provider_cooldown,
        stats=stats,
    )
    scheduler = Scheduler(
        MemoryBudgets(
            limits
            or TelegramLimits(
                edit_interval=settings.edit_interval,
                group_edit_interval=settings.group_edit_interval,
            )
        )
    )
    api = (
        TelegramAPIServer.from_base(settings.telegram_api_url)
        if settings.telegram_api_url
        else PRODUCTION
    )
    # Every streaming answer may hold a Bot API connection for its next edit: the
    # default pool of 100 would queue answers behind each other under load.
    session = AiohttpSession(api=api, limit=TELEGRAM_CONNECTIONS)
    session.middleware(
        RateLimitMiddleware(scheduler, on_retry_after=count_429, on_dropped=count_dropped)
    )
    bot = Bot(
        settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(link_preview_is_disabled=True),
    )
    unwritable = Unwritable()
    answerer = Answerer(
        llm=llm,
        history=history,
        scheduler=scheduler,
        system_prompt=settings.system_prompt,
        prompt_max_chars=settings.prompt_max_chars,
        group_max_concurrent=settings.group_max_concurrent,
        stats=stats,
        user_limits=user_limits,
        admin_ids=settings.admin_ids,
        unwritable=unwritable,
        stop_button=stop_keyboard,
        stream_mode=settings.stream_mode,
        draft_interval=settings.draft_interval,
    )
    dispatcher = create_dispatcher(
        answerer=answerer,
        stats=stats,
        admin_ids=settings.admin_ids,
        allowed_user_ids=settings.allowed_user_ids,
        shutdown_timeout=settings.shutdown_timeout,
        heartbeat_file=settings.heartbeat_file,
        token_store=token_store,
        paste_merger=MemoryPasteMerger(settings.merge_window),
        settings=settings,
        history=history,
        unwritable=unwritable,
    )
    return Application(
        settings, bot, dispatcher, answerer, llm, scheduler, redis, pin_response_models()
    )
