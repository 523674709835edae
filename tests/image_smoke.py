"""Smoke test of the bot's Docker image (``scripts/check-image`` builds it, then runs this).

The container runs with the host's network against the strict fake Bot API, the fake GPTalk
and a private ``redis-server``, all on loopback. Checked:

- the bot answers one private message, as rendered;
- the image's HEALTHCHECK turns ``healthy`` (run with ``--health-interval=2s``);
- the bot runs as a non-root user (PID 1's real and effective uid);
- with ``SHUTDOWN_TIMEOUT=3`` and a 60-second answer streaming, ``docker stop -t 10``
  exits 0, the container exits 0 within the grace period (no SIGKILL), and the answer
  carries the "restarting" marker.

``python -m tests.image_smoke --image gptalk-bot:check``; exit status 0 when all hold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bot.delivery.render import render
from bot.i18n import EN
from tests.fake_gptalk import FakeGPTalk
from tests.fake_telegram import FakeTelegram
from tests.redis_server import free_port, start_redis, stop_process

SHUTDOWN_TIMEOUT = 3
STOP_GRACE = 10


class SmokeError(Exception):
    """A check of the image that did not hold."""


async def docker(*args: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise SmokeError(f"docker {args[0]} failed ({proc.returncode}): {text}")
    return proc.returncode, text


async def inspect(container: str, template: str) -> str:
    return (await docker("inspect", "--format", template, container))[1]


async def wait_until(what: str, predicate: object, timeout: float) -> float:  # noqa: ASYNC109
    """Poll ``predicate`` (sync or async, returning bool) until true; seconds it took."""
    started = time.monotonic()
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SmokeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def container_env(tg: FakeTelegram, gptalk: FakeGPTalk, redis_port: int) -> list[str]:
    settings = {
        "BOT_TOKEN": tg.token,
        "TELEGRAM_API_URL": tg.url,
        "GPTALK_URL": gptalk.url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        # The image's 9090 could be taken on a shared host network; any free port will do.
        "HEALTH_PORT": str(free_port()),
        "HEALTH_HOST": "127.0.0.1",
    }
    return [arg for name, value in settings.items() for arg in ("-e", f"{name}={value}")]


async def smoke(image: str, workdir: Path) -> list[str]:
    report: list[str] = []
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise SmokeError("redis-server is not installed")
    redis_proc, redis_port = start_redis(redis_exe, workdir)
    tg, gptalk = FakeTelegram(), FakeGPTalk()
    name = f"gptalk-smoke-{os.getpid()}"
    try:
        await tg.start()
        await gptalk.start()
        started = time.monotonic()
        await docker(
            "run", "--detach", "--name", name, "--network", "host",
            "--health-interval=2s", *container_env(tg, gptalk, redis_port), image,
        )  # fmt: skip
        try:
            await wait_until("the bot's first long poll", lambda: tg.long_poll_pending, 90)
        except SmokeError:
            raise SmokeError((await docker("logs", name, check=False))[1][-3000:]) from None
        report.append(f"polling {time.monotonic() - started:.1f} s after docker run")

        uid = await docker("exec", name, "sh", "-c", "grep '^Uid:' /proc/1/status")
        ids = uid[1].split()[1:]
        if not ids or "0" in ids:
            raise SmokeError(f"the bot runs as root: {uid[1]}")
        report.append(f"PID 1 runs as uid {ids[0]} (real, effective, saved, fs: {ids})")

        user = tg.add_user(42, "Ann")
        gptalk.answer = "Hello from the **image**: it works."
        question = tg.user_message(tg.private_chat(user), user, "hello")
        expected = render(gptalk.answer).text
        took = await wait_until(
            "the answer to a private message",
            lambda: tg.visible_text(42, question["message_id"]) == expected,
            60,
        )
        report.append(f"answered a private message in {took:.1f} s")

        async def healthy() -> bool:
            return await inspect(name, "{{.State.Health.Status}}") == "healthy"

        took = await wait_until("HEALTHCHECK healthy", healthy, 60)
        report.append(f"healthy {took:.1f} s after the answer (--health-interval=2s)")

        gptalk.answer = "word " * 300
        gptalk.chunk_size, gptalk.delay = 5, 1.0  # 300 chunks, one a second: 5 minutes
        long_question = tg.user_message(tg.private_chat(user), user, "a long one")
        await wait_until(
            "the long answer's first message",
            lambda: any(m.reply_to == long_question["message_id"] for m in tg.bot_messages(42)),
            60,
        )
        stop_started = time.monotonic()
        code, out = await docker("stop", "-t", str(STOP_GRACE), name, check=False)
        stopped_in = time.monotonic() - stop_started
        if code != 0:
            raise SmokeError(f"docker stop -t {STOP_GRACE} exited {code}: {out}")
        exit_code = await inspect(name, "{{.State.ExitCode}}")
        if exit_code != "0":
            raise SmokeError(f"the container exited {exit_code} after docker stop")
        if stopped_in >= STOP_GRACE:
            raise SmokeError(f"docker stop took {stopped_in:.1f} s: killed, not stopped")
        marker = EN.shutdown.strip()
        text = tg.visible_text(42, long_question["message_id"])
        if "restarting" not in text or not text.rstrip().endswith(render(marker).text.strip()):
            raise SmokeError(f"the streaming answer lacks the restarting marker: …{text[-200:]!r}")
        report.append(
            f"docker stop -t {STOP_GRACE}: exit 0 in {stopped_in:.1f} s "
            f"(SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT}), answer marked restarting"
        )
        if tg.too_many_requests:
            raise SmokeError(f"{tg.too_many_requests} × 429 from the strict fake Bot API")
        return report
    finally:
        await docker("rm", "--force", name, check=False)
        await tg.close()
        await gptalk.close()
        stop_process(redis_proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gptalk-smoke-") as tmp:
        try:
            report = asyncio.run(smoke(args.image, Path(tmp)))
        except SmokeError as exc:
            print(f"image smoke test FAILED: {exc}", file=sys.stderr)
            return 1
    for line in report:
        print(f"  ok: {line}")
    print(f"image smoke test: all {len(report)} checks hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
