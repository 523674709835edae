"""A raid of chatter while an answer streams: does the answer's final edit still arrive?

Ann asks the bot in a group; while her answer streams, N people send ``/help@bot``
there. The group's budget is 20 calls a minute: the help replies are chatter (they
may take a reserved share but never delay the answer's final edit, and are dropped
when they cannot go out within a few seconds). Measured on Telegram's clock (the
fake runs ten times faster than real time): the delay between the end of the stream
and the final edit, 429s, help replies sent and dropped.

    .venv/bin/python -m bench.bench_raid [--raiders 40]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from bench._common import load_average, machine, table
from bot.delivery.budgets import TelegramLimits
from tests.bot_harness import BotHarness
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram

SCALE = 0.1
GROUP_ID = -100900
BOT = "@gptalk_test_bot"


class TimedGPTalk(FakeGPTalk):
    """Notes on Telegram's clock when each answer stream has been written out."""

    def __init__(self, tg: FakeTelegram, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tg = tg
        self.stream_ends: list[float] = []

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = await super()._stream(request)
        self.stream_ends.append(self.tg.now())
        return response


async def raid(raiders: int) -> list[object]:
    async with FakeTelegram(time_scale=SCALE) as tg:
        gptalk = TimedGPTalk(tg, answer="word " * 300, chunk_size=15, delay=0.1)  # ~60 s
        await gptalk.start()
        harness = BotHarness(tg, gptalk, redis_url=None, limits=TelegramLimits(time_scale=SCALE))
        await harness.start()
        try:
            group = tg.group_chat(GROUP_ID, "Raided")
            ann = harness.user(1, "Ann")
            text = f"{BOT} tell me a long story"
            entity = {"type": "mention", "offset": 0, "length": len(BOT)}
            question = harness.say(ann, text, chat=group, entities=[entity])
            await tg.wait_for(lambda: bool(harness.replies(question)), timeout=30)
            await asyncio.sleep(0.5)
            help_text = f"/help{BOT}"
            command = {"type": "bot_command", "offset": 0, "length": len(help_text)}
            for i in range(raiders):
                raider = harness.user(100 + i, f"R{i}")
                harness.say(raider, help_text, chat=group, entities=[command])
            # Dropped help replies end their updates with ChatterDroppedError (handled by
            # the bot's error router), so wait for the updates without settle()'s check.
            await tg.wait_for(
                lambda: len(harness.tracker.done) >= raiders + 1 and not harness.answerer.active,
                timeout=120,
            )
            [answer] = [
                m for m in tg.bot_messages(GROUP_ID) if m.reply_to == question["message_id"]
            ]
            final = max(
                c.at
                for c in tg.calls
                if c.ok
                and c.method in {"sendMessage", "editMessageText"}
                and c.params.get("chat_id") == GROUP_ID
                and (c.params.get("message_id") == answer.message_id or c.method == "sendMessage")
                and c.params.get("text", "").startswith("word")
            )
            replied = sum(m.message_id != answer.message_id for m in tg.bot_messages(GROUP_ID))
            delay = final - gptalk.stream_ends[0]
            return [raiders, f"{delay:.1f}", tg.too_many_requests, replied, raiders - replied]
        finally:
            await harness.stop()
            await gptalk.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_raid", description=__doc__)
    parser.add_argument("--raiders", default="40")
    args = parser.parse_args(argv)
    print(f"# bench_raid — {machine()}\n")
    rows = [asyncio.run(raid(int(n))) for n in args.raiders.split(",")]
    headers = [
        "raiders",
        "final edit after stream end (Telegram s)",
        "429s",
        "help replies sent",
        "help replies dropped",
    ]
    print(table(headers, rows))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
