"""``python -m bot.healthcheck [--max-age 90]``: is the bot's event loop alive?

The container's HEALTHCHECK. The running bot rewrites ``HEARTBEAT_FILE`` every 15 s
(``bot/heartbeat.py``); this exits 0 when the file exists and was written less than
``--max-age`` seconds ago, else 1 with one line on stderr. It reads only the environment
and the file (no settings, no network), so it is quick and needs no ``BOT_TOKEN``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_HEARTBEAT_FILE", "DEFAULT_MAX_AGE", "check", "main"]

DEFAULT_HEARTBEAT_FILE = Path("/tmp/gptalk-bot.heartbeat")
DEFAULT_MAX_AGE = 90.0


class Unhealthy(Exception):
    """The one line that says why."""


def heartbeat_path() -> Path:
    value = os.environ.get("HEARTBEAT_FILE")
    if value is None:
        return DEFAULT_HEARTBEAT_FILE
    if not value.strip():
        raise Unhealthy("HEARTBEAT_FILE is empty, so the bot writes no heartbeat")
    return Path(value.strip())


def check(path: Path, max_age: float) -> float:
    """The heartbeat's age in seconds; ``Unhealthy`` when missing or too old."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise Unhealthy(f"no heartbeat file {path} (the bot is not running yet?)") from None
    except OSError as exc:
        raise Unhealthy(f"cannot read the heartbeat file {path}: {exc.strerror}") from None
    age = max(0.0, time.time() - mtime)
    if age > max_age:
        raise Unhealthy(
            f"heartbeat file {path} is {age:.0f}s old (limit {max_age:g}s): the bot is stuck"
        )
    return age


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.healthcheck",
        description="Exit 0 if the bot's heartbeat file (HEARTBEAT_FILE) is fresh, else 1.",
    )
    parser.add_argument(
        "--max-age",
        type=_positive,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"oldest acceptable heartbeat (default {DEFAULT_MAX_AGE:g})",
    )
    args = parser.parse_args(argv)
    try:
        age = check(heartbeat_path(), args.max_age)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: heartbeat {age:.0f}s old")
    return 0


if __name__ == "__main__":
    sys.exit(main())
