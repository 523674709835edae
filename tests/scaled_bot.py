"""A bot against a strict fake Bot API whose clock runs ten times faster: Telegram's
limits cost a tenth of their real time, for the tests whose answers stream for seconds.
A module using it overrides the ``tg`` fixture with ``FakeTelegram(time_scale=SCALE)``."""

from __future__ import annotations

from typing import Any

from bot.delivery.budgets import TelegramLimits
from tests.bot_harness import BotHarness
from tests.conftest import BotFactory

__all__ = ["SCALE", "last_turn", "start"]

SCALE = 0.1


async def start(make_bot: BotFactory, **settings: Any) -> BotHarness:
    return await make_bot(limits=TelegramLimits(time_scale=SCALE), **settings)


def last_turn(prompt: str) -> str:
    """The question a GPTalk prompt ends with."""
    return prompt.removesuffix("\nAssistant:").rsplit("User: ", 1)[-1]
