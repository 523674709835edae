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
    GetChatMember,
    GetMe,
    GetUpdates,
    GetWebhookInfo,
    SendChatAction,
    SendMessage,
    SetMyCommands,
    SetWebhook,
)
from aiogram.methods.base import Response
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bot.answering import Answerer, conversation_limits
from bot.chat_admins import ChatAdmins
from bot.config import Settings
from bot.conversation.arrivals import Arrivals
from bot.conversation.control import Control, LocalControl, RedisControl
from bot.conversation.handback import HandBacks
from bot.conversation.line import Lines
from bot.conversation.paste_merger import MemoryPasteMerger, PasteLimits, PasteMerger
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine
from bot.conversation.redis_paste import RedisPasteMerger
from bot.delivery.budgets import Budgets, MemoryBudgets, TelegramLimits
from bot.delivery.journal import Journal, MemoryJournal, RedisJournal
from bot.delivery.recovery import Recovery
from bot.delivery.redis_budgets import RedisBudgets
from bot.delivery.scheduler import RateLimitMiddleware, Scheduler
from bot.dispatcher import create_dispatcher
from bot.handlers.stop import stop_keyboard
from bot.lag import LagProbe
from bot.observability import Metrics, ObserveUpdates, TelegramCallMetrics
from bot.providers import FallbackLLM, Provider, service_name
from bot.providers.gptalk import GPTalkProvider
from bot.providers.openai import OpenAIProvider
from bot.storage.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore
from bot.storage.keys import ConversationKey, Keys
from bot.storage.last_prompts import LastPrompts, MemoryLastPrompts, RedisLastPrompts
from bot.storage.stats import MemoryStats, RedisStats, Stats
from bot.storage.user_limits import MemoryUserLimits, RedisUserLimits, UserLimits
from bot.transport.health import Health
from bot.unwritable import Unwritable
from gptalk import GPTalkClient, MemoryTokenStore, RedisTokenStore, TokenStore
from gptalk.redis_url import redis_from_url

__all__ = ["Application", "StartupError", "build_application"]

log = logging.getLogger("bot")

TELEGRAM_CONNECTIONS = 512
REDIS_CONNECTIONS = 64
# Telegram's shared budgets have a client of their own: their calls are on the path of
# every Telegram call and give up after 1 s, and on the shared pool a burst of other
# commands (1,000 answers' history, journal, line) kept them waiting for a connection
# until the wait looked like an outage (bench/REPORT.md).
BUDGET_CONNECTIONS = 8
# Seconds one Redis command may take. Redis answers in well under a millisecond, so
# this only ends waits on a hung server: short enough that a prompt arriving during
# an outage gets its notice within seconds, long enough for a 2 s BLPOP (control.py).
REDIS_COMMAND_TIMEOUT = 3.0


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
    metrics: Metrics
    health: Health
    lag: LagProbe
    response_models: list[Any] = field(default_factory=list)
    journal: Journal | None = None
    budgets_redis: Redis | None = None  # the budgets' own client (see BUDGET_CONNECTIONS)

    async def aclose(self) -> None:
        await self.scheduler.aclose()
        if isinstance(self.scheduler.budgets, RedisBudgets):
            await self.scheduler.budgets.aclose()
        if self.budgets_redis is not None:
            await self.budgets_redis.aclose()
        await self.bot.session.close()
        await self.llm.close()
        if self.redis is not None:
            await self.redis.aclose()


def pin_response_models() -> list[Any]:
    """aiogram parametrizes ``Response[...]`` for every API call and pydantic caches
    those classes only weakly, so without a reference they are rebuilt over and over
    (~20 % of the CPU under load, bench/REPORT.md). The app holds the ones it uses."""
    used = (
        GetUpdates, GetMe, SendMessage, EditMessageText, SendChatAction, SetMyCommands,
        GetWebhookInfo, SetWebhook, GetChatMember,
    )  # fmt: skip
    return [Response.__class_getitem__(cast(Any, method.__returning__)) for method in used]


async def connect_redis(url: str, *, max_connections: int = REDIS_CONNECTIONS) -> Redis:
    """A client whose every command is bounded in time, so that a hung or vanished
    Redis fails fast (answers already streaming finish, new prompts get a notice).
    Behind Sentinel it follows the master: after a failover, the next command (or
    its one retry) connects to the new one."""
    redis = redis_from_url(
        url,
        # Many answers at once share the pool; when all connections are busy a
        # command waits for one (up to `timeout`) instead of failing.
        max_connections=max_connections,
        timeout=5,
        socket_timeout=REDIS_COMMAND_TIMEOUT,
        socket_connect_timeout=REDIS_COMMAND_TIMEOUT,
        health_check_interval=30,
        # One quick retry for a dropped idle connection, not redis-py's default of ten
        # with backoff (~4 s per command when Redis is down), and none after a timeout:
        # a server that did not answer in time will not answer a retry either, and
        # retrying would double every wait on the prompt path.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
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
    metrics = Metrics(settings.replica_id)
    redis: Redis | None = None
    history: HistoryStore
    last_prompts: LastPrompts
    journal: Journal
    token_store: TokenStore
    stats: Stats
    user_limits: UserLimits | None = None
    line: Lines[ConversationKey] | None = None  # None: the Answerer's own, in this process
    arrivals: Arrivals[ConversationKey] = Arrivals()
    handbacks: HandBacks | None = None  # None: a stopping process has nobody to hand to
    control: Control = LocalControl()
    subscriber: Subscriber | None = None
    paste_limits = PasteLimits(settings.paste_max_parts, settings.prompt_max_chars)
    paste_merger: PasteMerger = MemoryPasteMerger(settings.merge_window, paste_limits)
    if settings.redis_url:
        redis = await connect_redis(settings.redis_url)
        # Replicas share who answers when, and hear each other's /stop and /new.
        subscriber = Subscriber(redis)
        redis_line: RedisLine[ConversationKey] = RedisLine(
            redis,
            keys,
            subscriber,
            limits=conversation_limits(group_max_concurrent=settings.group_max_concurrent),
            lease=settings.journal_lease,
        )
        line, arrivals = redis_line, Arrivals(redis_line)
        handbacks = HandBacks(
            redis, keys, subscriber, redis_line, interval=settings.journal_lease / 3
        )
        control = RedisControl(redis, keys, subscriber)
        paste_merger = RedisPasteMerger(
            redis, keys, subscriber, settings.merge_window, paste_limits
        )
        history = RedisHistoryStore(
            redis, keys, max_messages=settings.history_max_messages, ttl=settings.history_ttl
        )
        last_prompts = RedisLastPrompts(redis, keys, ttl=settings.history_ttl)
        token_store = RedisTokenStore(
            redis,
            prefix=settings.redis_prefix,
            connect_timeout=settings.gptalk_connect_timeout,
            read_timeout=settings.gptalk_read_timeout,
        )
        stats = RedisStats(redis, keys)
        journal = RedisJournal(redis, keys, owner=settings.replica_id, lease=settings.journal_lease)
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
        last_prompts = MemoryLastPrompts(ttl=settings.history_ttl)
        token_store = MemoryTokenStore()
        stats = MemoryStats()
        journal = MemoryJournal(owner=settings.replica_id, lease=settings.journal_lease)
        if settings.user_rate_limit:
            user_limits = MemoryUserLimits(settings.user_rate_limit)

    async def count_login() -> None:
        metrics.logins.inc()
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
    limits = limits or TelegramLimits(
        edit_interval=settings.edit_interval,
        group_edit_interval=settings.group_edit_interval,
        time_scale=settings.telegram_time_scale,
    )
    # With Redis every replica keeps Telegram's limits together with the others.
    budgets: Budgets = MemoryBudgets(limits)
    budgets_redis: Redis | None = None
    if settings.redis_url:
        budgets_redis = await connect_redis(settings.redis_url, max_connections=BUDGET_CONNECTIONS)
        budgets = RedisBudgets(budgets_redis, keys, limits)
    scheduler = Scheduler(
        budgets,
        on_grant=lambda priority, waited: metrics.limiter_granted(priority.name.lower(), waited),
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
    # Inside the rate limiter: it counts each request that reaches Telegram.
    session.middleware(TelegramCallMetrics(metrics))
    bot = Bot(
        settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(link_preview_is_disabled=True),
    )
    unwritable = Unwritable()
    # One probe per process, read by /stats (and by metrics): built here, passed on.
    lag = LagProbe(on_sample=metrics.loop_lagged)
    answerer = Answerer(
        llm=llm,
        history=history,
        last_prompts=last_prompts,
        scheduler=scheduler,
        system_prompt=settings.system_prompt,
        prompt_max_chars=settings.prompt_max_chars,
        group_max_concurrent=settings.group_max_concurrent,
        stats=stats,
        user_limits=user_limits,
        admin_ids=settings.admin_ids,
        unwritable=unwritable,
        journal=journal,
        metrics=metrics,
        line=line,
        arrivals=arrivals,
        handbacks=handbacks,
        control=control,
        stop_button=stop_keyboard,
        stream_mode=settings.stream_mode,
        draft_interval=settings.draft_interval,
    )
    metrics.streaming.set_function(lambda: answerer.active)
    dispatcher = create_dispatcher(
        answerer=answerer,
        stats=stats,
        admin_ids=settings.admin_ids,
        allowed_user_ids=settings.allowed_user_ids,
        shutdown_timeout=settings.shutdown_timeout,
        heartbeat_file=settings.heartbeat_file,
        default_language=settings.default_language,
        token_store=token_store,
        paste_merger=paste_merger,
        settings=settings,
        history=history,
        unwritable=unwritable,
        lag=lag,
        # One cache per process: every handler and filter that asks shares its answers.
        chat_admins=ChatAdmins(),
    )
    dispatcher.update.outer_middleware(ObserveUpdates(metrics))
    dispatcher.startup.register(lag.start)
    dispatcher.shutdown.register(lag.stop)
    # Registered after the dispatcher's own hooks: at shutdown the lease outlives the
    # answers still finishing, so that no other process interrupts them.
    recovery = Recovery(
        bot,
        journal,
        history,
        interval=settings.journal_lease / 3,
        default_language=settings.default_language,
    )
    dispatcher.startup.register(recovery.start)
    dispatcher.shutdown.register(recovery.stop)
    if subscriber is not None:
        # Closed after the answers drained: prompts still waiting hear their turn.
        dispatcher.startup.register(subscriber.start)
        dispatcher.shutdown.register(subscriber.aclose)
    # Last: prompts handed back by stopping replicas are answered once all is up.
    dispatcher.startup.register(answerer.start)
    health = Health(bot=bot, redis=redis, metrics=metrics)
    return Application(
        settings,
        bot,
        dispatcher,
        answerer,
        llm,
        scheduler,
        redis,
        metrics,
        health,
        lag,
        pin_response_models(),
        journal,
        budgets_redis,
    )
