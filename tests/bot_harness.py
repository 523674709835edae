"""The whole bot, built by the production factory, against the fake servers.

Polling runs as in production (real aiogram Dispatcher, real getUpdates long
polls); a small outer middleware only *observes* which updates have been fully
handled, so tests can wait until the bot is done instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from bot.app import Application, build_application
from bot.config import Settings
from bot.delivery.budgets import TelegramLimits
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram


class UpdateTracker(BaseMiddleware):
    def __init__(self) -> None:
        self.done: set[int] = set()
        self.errors: list[BaseException] = []

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        assert isinstance(event, Update)
        try:
            return await handler(event, data)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.done.add(event.update_id)


class BotHarness:
    def __init__(
        self,
        tg: FakeTelegram,
        gptalk: FakeGPTalk,
        *,
        redis_url: str | None,
        limits: TelegramLimits | None = None,
        **settings: Any,
    ) -> None:
        self.tg, self.gptalk = tg, gptalk
        self.settings = Settings(
            _env_file=None,
            bot_token=tg.token,
            telegram_api_url=tg.url,
            gptalk_url=gptalk.url,
            redis_url=redis_url,
            **settings,
        )
        self._limits = limits
        self.tracker = UpdateTracker()
        self.app: Application | None = None
        self._polling: asyncio.Task[None] | None = None
        self._pushed: set[int] = set()
        self._fed: set[asyncio.Task[Any]] = set()

    async def start(self) -> BotHarness:
        self.app = await build_application(self.settings, limits=self._limits)
        dp = self.app.dispatcher
        dp.update.outer_middleware(self.tracker)
        self._polling = asyncio.create_task(
            dp.start_polling(
                self.app.bot,
                handle_signals=False,
                close_bot_session=False,
                polling_timeout=1,
                allowed_updates=dp.resolve_used_update_types(),
            )
        )
        await self.tg.wait_for(lambda: self.tg.long_poll_pending, timeout=10)
        return self

    async def stop(self) -> None:
        if self.app is None:
            return
        if self._polling is not None and not self._polling.done():
            await self.app.dispatcher.stop_polling()
            await asyncio.wait_for(self._polling, 60)
        await self.app.aclose()
        self.app = None

    @property
    def answerer(self) -> Any:
        assert self.app is not None
        return self.app.answerer

    # --- what users do -------------------------------------------------------------------

    def user(self, user_id: int = 1001, name: str = "Ann") -> dict[str, Any]:
        return self.tg.add_user(user_id, name)

    def say(self, user: dict[str, Any], text: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The user writes to the bot in private."""
        chat = kwargs.pop("chat", None) or self.tg.private_chat(user)
        message = self.tg.user_message(chat, user, text, **kwargs)
        self._pushed.add(max(u["update_id"] for u in self.tg.pending_updates))
        return message

    def feed(self) -> None:
        """Hand the updates queued so far to this bot directly, not through its long
        poll: as a load balancer would give them to one replica of several."""
        assert self.app is not None
        for update in self.tg.take_updates():
            self._pushed.add(int(update["update_id"]))
            task = asyncio.create_task(self.app.dispatcher.feed_raw_update(self.app.bot, update))
            self._fed.add(task)
            task.add_done_callback(self._fed.discard)

    def expect_pending(self) -> None:
        """Updates the fake queued by itself (service messages, ``my_chat_member``):
        :meth:`settle` waits for them too."""
        self._pushed.update(int(u["update_id"]) for u in self.tg.pending_updates)

    async def settle(self, within: float = 30.0) -> None:
        """Wait until every update pushed so far has been handled completely."""
        await self.tg.wait_for(lambda: self._pushed <= self.tracker.done, timeout=within)
        assert not self.tracker.errors, self.tracker.errors

    def answer(self, message: dict[str, Any]) -> str:
        return self.tg.visible_text(message["chat"]["id"], message["message_id"])

    def replies(self, message: dict[str, Any]) -> list[str]:
        """Texts of the bot's messages replying to ``message``."""
        chat_id, message_id = message["chat"]["id"], message["message_id"]
        return [m.text for m in self.tg.bot_messages(chat_id) if m.reply_to == message_id]
