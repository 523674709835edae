"""``python -m gptalk "prompt"``: stream GPTalk's answer to stdout.

Defaults come from the environment (``GPTALK_URL``, ``GPTALK_MODEL``,
``GPTALK_PROXY``, ``GPTALK_MAX_USES``, ``GPTALK_CONNECT_TIMEOUT``,
``GPTALK_READ_TIMEOUT``, ``REDIS_URL``, ``REDIS_PREFIX``). With a Redis URL the
token lives in Redis, so several CLI processes (and bots) share one token.
Exit status: 0 on success, 1 when the request fails, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .auth import RedisTokenStore, TokenStore
from .client import DEFAULT_BASE_URL, DEFAULT_MAX_USES, DEFAULT_MODEL, GPTalkClient
from .errors import GPTalkError
from .redis_url import check_redis_url, redis_from_url
from .urls import check_http_url, url_secrets, without_userinfo

T = TypeVar("T")


class UsageError(Exception):
    pass


def _env(name: str, convert: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise UsageError(f"{name}: invalid value {raw!r}") from None
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(raw)
    return value


def _clean(text: str, args: argparse.Namespace) -> str:
    """``text`` without the credentials of any URL given (the library masks its own;
    this also covers what redis-py's messages might quote)."""
    for url in (args.url, args.proxy, args.redis_url):
        for secret in url_secrets(url or ""):
            text = text.replace(secret, "***")
    return without_userinfo(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gptalk",
        description="Stream an answer from GPTalk to stdout.",
        epilog="Environment: GPTALK_URL, GPTALK_MODEL, GPTALK_PROXY, GPTALK_MAX_USES, "
        "GPTALK_CONNECT_TIMEOUT, GPTALK_READ_TIMEOUT, REDIS_URL, REDIS_PREFIX.",
    )
    parser.add_argument(
        "prompt", nargs="+", help="the prompt (several words are joined); - reads stdin"
    )
    parser.add_argument("--url", default=None, help=f"GPTalk base URL (default {DEFAULT_BASE_URL})")
    parser.add_argument("--model", default=None, help=f"model (default {DEFAULT_MODEL})")
    parser.add_argument("--proxy", default=None, help="HTTP proxy for GPTalk requests")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="share the token through this Redis (redis://… or redis+sentinel://…)",
    )
    return parser


async def _run(args: argparse.Namespace, prompt: str, out: TextIO) -> None:
    redis: Redis | None = None
    store: TokenStore | None = None
    if args.redis_url:
        redis = redis_from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
        store = RedisTokenStore(
            redis,
            prefix=args.redis_prefix,
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
        )
    try:
        async with (
            GPTalkClient(
                base_url=args.url,
                model=args.model,
                proxy=args.proxy,
                max_uses=args.max_uses,
                connect_timeout=args.connect_timeout,
                read_timeout=args.read_timeout,
                token_store=store,
            ) as client,
            client.stream([{"role": "user", "content": prompt}]) as answer,
        ):
            async for delta in answer:
                out.write(delta)
                out.flush()
        out.write("\n")
        out.flush()
    finally:
        if redis is not None:
            await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits with 2 on usage errors
    try:
        args.url = args.url or os.environ.get("GPTALK_URL") or DEFAULT_BASE_URL
        args.model = args.model or os.environ.get("GPTALK_MODEL") or DEFAULT_MODEL
        args.proxy = args.proxy or os.environ.get("GPTALK_PROXY") or None
        args.redis_url = args.redis_url or os.environ.get("REDIS_URL") or None
        args.redis_prefix = os.environ.get("REDIS_PREFIX") or "gptalk"
        args.max_uses = _env("GPTALK_MAX_USES", _positive_int, DEFAULT_MAX_USES)
        args.connect_timeout = _env("GPTALK_CONNECT_TIMEOUT", _positive_float, 10.0)
        args.read_timeout = _env("GPTALK_READ_TIMEOUT", _positive_float, 60.0)
        for names, url in (("--url/GPTALK_URL", args.url), ("--proxy/GPTALK_PROXY", args.proxy)):
            try:
                if url is not None:
                    check_http_url(url)
            except ValueError as exc:  # its reason never quotes the URL
                raise UsageError(f"{names}: {exc}") from None
        if args.redis_url:
            try:
                check_redis_url(args.redis_url)
            except ValueError as exc:  # its reason never quotes the URL
                raise UsageError(f"--redis-url/REDIS_URL: {exc}") from None
    except UsageError as exc:
        parser.error(str(exc))
    prompt = sys.stdin.read() if args.prompt == ["-"] else " ".join(args.prompt)
    if not prompt.strip():
        parser.error("the prompt is empty")
    try:
        asyncio.run(_run(args, prompt, sys.stdout))
    except GPTalkError as exc:
        print(f"gptalk: error: {_clean(str(exc), args)}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"gptalk: error: Redis is not usable: {_clean(str(exc), args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
