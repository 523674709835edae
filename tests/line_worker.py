"""A separate OS process for the multi-process line and control tests.

Reads JSON commands on stdin, one a line, and prints JSON events on stdout:

- ``{"op": "enter", "id": "m10", "key": "c", "sender": "ann", "order": 10, "hold": 0.2}``
  takes a place in the shared :class:`RedisLine` (prints ``entered`` or ``full``), then
  in the background waits for the turn (``start``), holds it ``hold`` seconds (or until
  ``{"op": "release", "id": …}`` when ``hold`` is null) and leaves (``end``).
- ``{"op": "send", "command": "stop", …fields}`` sends a control command and prints
  ``sent`` with the count; received commands are printed as ``applied`` and count 1.

Times are ``time.time()``, comparable across processes on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from redis.asyncio import Redis

from bot.conversation.control import Command, RedisControl
from bot.conversation.line import LineDroppedError
from bot.conversation.pubsub import Subscriber
from bot.conversation.redis_line import RedisLine, RedisTicket
from bot.storage.keys import Keys


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def hold(
    ticket: RedisTicket[str], name: str, seconds: float | None, release: asyncio.Event
) -> None:
    try:
        async with ticket:
            emit("start", id=name)
            if seconds is None:
                await release.wait()
            else:
                await asyncio.sleep(seconds)
            emit("end", id=name)
    except LineDroppedError:
        emit("dropped", id=name)


async def run(args: argparse.Namespace) -> None:
    redis = Redis.from_url(args.redis_url)
    keys = Keys(args.prefix)
    subscriber = Subscriber(redis)
    line: RedisLine[str] = RedisLine(
        redis,
        keys,
        subscriber,
        max_waiting=args.max_waiting,
        max_running=args.max_running,
        lease=args.lease,
    )
    control = RedisControl(redis, keys, subscriber)

    async def applied(command: Command) -> int:
        emit("applied", command={k: v for k, v in command.items() if k != "reply"})
        return 1

    control.on("stop", applied)
    control.on("stop_answer", applied)
    await subscriber.start()
    releases: dict[str, asyncio.Event] = {}
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    emit("ready")
    while line_in := await loop.run_in_executor(None, sys.stdin.readline):
        request = json.loads(line_in)
        if request["op"] == "enter":
            name = request["id"]
            ticket = await line.enter(
                request.get("key", "c"), request.get("sender"), order=request.get("order")
            )
            if ticket is None:
                emit("full", id=name)
                continue
            emit("entered", id=name)
            releases[name] = asyncio.Event()
            task = asyncio.create_task(hold(ticket, name, request.get("hold"), releases[name]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif request["op"] == "release":
            releases[request["id"]].set()
        elif request["op"] == "send":
            fields = {k: v for k, v in request.items() if k not in ("op", "command")}
            emit("sent", count=await control.send(request["command"], **fields))
    await subscriber.aclose()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="gptalk")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--max-running", type=int, default=1)
    parser.add_argument("--max-waiting", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
