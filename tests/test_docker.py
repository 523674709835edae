"""The container wiring, checked as text: no Docker engine is needed (nor used)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Settings
from bot.healthcheck import DEFAULT_HEARTBEAT_FILE
from gptalk.redis_url import check_redis_url
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = "/opt/venv/bin/python"


# --- helpers --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a continuation line"
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(part) for part in value]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for item in shlex.split(args):
            name, sep, value = item.partition("=")
            assert sep, f"use ENV NAME=value: {args}"
            env[name] = value
    return env


class StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Compose v2 refuses the file. So do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges keys; an explicit key may override them
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping
)


def load_compose(text: str) -> dict[str, Any]:
    data = yaml.load(text, Loader=StrictLoader)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose((ROOT / "docker-compose.yml").read_text())


_EXPANSION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])(.*))?", re.DOTALL)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation (``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:+r}``,
    ``${V+r}``, ``${V:?e}``, nested), as its specification describes it."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                assert j < len(value), f"unclosed ${{ in {value!r}"
                if value.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= value[j] == "}"
                j += 1
            match = _EXPANSION.fullmatch(value[i + 2 : j - 1])
            assert match, value
            name, op, word = match[1], match[2], match[3] or ""
            present, nonempty = name in env, bool(env.get(name))
            given = nonempty if op and op.startswith(":") else present
            if op is None:
                out.append(env.get(name, ""))
            elif op.endswith("-"):
                out.append(env[name] if given else interpolate(word, env))
            elif op.endswith("+"):
                out.append(interpolate(word, env) if given else "")
            else:
                assert given, f"{name}: {word}"
                out.append(env[name])
            i = j
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"no service {name!r} in docker-compose.yml"
    result = services[name]
    assert isinstance(result, dict)
    return result


def environment(svc: dict[str, Any]) -> dict[str, str | None]:
    """A service's ``environment`` as a mapping, whichever of the two syntaxes is used."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in env.items()}


def env_example_names() -> list[str]:
    """Variables assigned in .env.example (commented-out examples excluded)."""
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)


def readme_config_names() -> set[str]:
    """The variables of README's configuration table (the table of design.md)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", section, flags=re.MULTILINE))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


# --- docker-compose.yml -----------------------------------------------------------------------


def test_bot_is_built_here_and_waits_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    bot = service(compose, "bot")
    build = bot["build"]
    assert (build if isinstance(build, str) else build.get("context")) in (".", "./")
    assert bot["depends_on"]["redis"]["condition"] == "service_healthy"
    assert bot["restart"] == "unless-stopped"


def test_bot_talks_to_the_redis_service(compose: dict[str, Any]) -> None:
    url = environment(service(compose, "bot"))["REDIS_URL"]
    assert url is not None
    assert interpolate(url, {}) == "redis://redis:6379/0"
    assert interpolate(url, {"REDIS_PASSWORD": ""}) == "redis://redis:6379/0"
    assert interpolate(url, {"REDIS_PASSWORD": "s3cret"}) == "redis://:s3cret@redis:6379/0"
    check_redis_url(interpolate(url, {"REDIS_PASSWORD": "s3cret"}))


def test_the_compose_loader_refuses_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'A'"):
        load_compose("services:\n  bot:\n    environment:\n      A:\n      B:\n      A:\n")
    # Merge keys (<<) are how the replicas share the bot's settings: not duplicates.
    merged = load_compose("x: &x {A: 1}\ny:\n  <<: *x\n  B: 2\n")
    assert merged["y"] == {"A": 1, "B": 2}


def test_every_setting_is_listed_once_in_the_bot_environment() -> None:
    """The strict loader refuses duplicates; this names them, in the text itself."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split("    environment: &bot-environment\n", 1)[1]
    block = block.split("\n    depends_on:", 1)[0]
    names = re.findall(r"^      ([A-Z][A-Z0-9_]*):", block, flags=re.MULTILINE)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert duplicates == []
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - {"HEARTBEAT_FILE", "JOURNAL_LEASE", "TELEGRAM_TIME_SCALE"} <= set(names)


def test_interpolation_as_compose_does_it() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("$${A} ${A} ${B:-b} ${E:-e} ${E-e} ${A:+[${A}]} ${B+x}", env) == (
        "${A} a b e  [a] "
    )
    with pytest.raises(AssertionError, match="B: needed"):
        interpolate("${B:?needed}", env)


def test_only_the_ports_the_deployment_needs_are_published(compose: dict[str, Any]) -> None:
    """nginx's webhook port, nothing else: not Redis, not the bots' health listeners."""
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert published == {"nginx": ["8080:8080"]}
    assert all("expose" not in svc for svc in compose["services"].values())


def test_env_file_is_optional(compose: dict[str, Any]) -> None:
    """A fresh clone without .env works with variables from the shell."""
    entries = service(compose, "bot")["env_file"]
    entries = entries if isinstance(entries, list) else [entries]
    dot_env = [e for e in entries if isinstance(e, dict) and e.get("path") in (".env", "./.env")]
    assert dot_env, "env_file needs the long syntax: {path: .env, required: false}"
    assert all(e.get("required") is False for e in dot_env)
    assert ".env" not in entries, "a plain '.env' entry makes the file required"


def test_redis_is_persistent_and_health_checked(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert redis["image"] == "redis:7"
    assert redis["restart"] == "unless-stopped"
    test = redis["healthcheck"]["test"]
    words = " ".join(test) if isinstance(test, list) else test
    assert "redis-cli" in words
    assert "ping" in words

    command = redis["command"]
    assert command[:2] == ["sh", "-c"]
    assert shlex.split(command[2])[:4] == ["exec", "redis-server", "--appendonly", "yes"]

    volumes = [v for v in redis["volumes"] if isinstance(v, str) and v.endswith(":/data")]
    assert len(volumes) == 1, redis["volumes"]
    volume = volumes[0].split(":", 1)[0]
    assert volume in (compose.get("volumes") or {}), f"volume {volume!r} is not declared"
    assert "ports" not in redis, "Redis is for the bot only: publish no host port"


def shell_command(line: str, env: dict[str, str], **options: str) -> str:
    """A compose ``sh -c`` line as the container's shell gets it, with ``options`` added
    after the program's name (``redis-server``, ``redis-cli``)."""
    line = interpolate(line, env)  # compose's pass: `$$` becomes `$`
    for program, extra in options.items():
        line = line.replace(
            f"{program.replace('_', '-')} ", f"{program.replace('_', '-')} {extra} ", 1
        )
    return line


@pytest.mark.parametrize("password", ["", "s3cretPW42"])
def test_redis_password_turns_on_requirepass_and_the_health_check_passes(
    compose: dict[str, Any], tmp_path: Path, password: str
) -> None:
    """The redis service's own command and health check, run by ``sh`` on this machine's
    redis-server (its port and directory added), with and without REDIS_PASSWORD."""
    redis = service(compose, "redis")
    env = {
        name: interpolate(value or "", {"REDIS_PASSWORD": password})
        for name, value in environment(redis).items()
    }
    assert env == {"REDIS_PASSWORD": password}
    port = free_port()
    here = f"--port {port} --bind 127.0.0.1 --dir {tmp_path}"
    server = subprocess.Popen(
        ["sh", "-c", shell_command(redis["command"][2], {}, redis_server=here)],
        env={**os.environ, **env}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        [kind, health] = redis["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        check = shell_command(health, {}, redis_cli=f"-p {port}")
        deadline = time.monotonic() + 10
        while subprocess.run(["sh", "-c", check], env={**os.environ, **env}).returncode:
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.1)
        anonymous = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        assert ("NOAUTH" in anonymous.stdout) is bool(password), anonymous.stdout
        if password:  # the health check is not passing for a reason other than the password
            wrong = subprocess.run(["sh", "-c", check], env={**os.environ, "REDIS_PASSWORD": "x"})
            assert wrong.returncode != 0
    finally:
        server.terminate()
        server.wait(10)


def test_stop_grace_period_covers_the_shutdown_timeout(compose: dict[str, Any]) -> None:
    """docker stop: SIGTERM, then SIGKILL after the grace period (Docker's default: 10 s)."""
    shutdown_timeout = Settings.model_fields["shutdown_timeout"].default
    grace = service(compose, "bot").get("stop_grace_period", "10s")
    assert seconds(grace) > shutdown_timeout


def test_passed_variables_are_spelled_as_documented(compose: dict[str, Any]) -> None:
    passed = environment(service(compose, "bot"))
    documented = readme_config_names()
    assert passed.keys() <= documented, passed.keys() - documented
    assert sorted(passed) == sorted(env_example_names()), (
        "docker-compose.yml should pass exactly the variables of .env.example"
    )
    # JOURNAL_LEASE and TELEGRAM_TIME_SCALE are test-only (README): a deployment has
    # no reason to set them.
    settings = {name.upper() for name in Settings.model_fields} - {
        "HEARTBEAT_FILE",
        "JOURNAL_LEASE",
        "TELEGRAM_TIME_SCALE",
    }
    assert settings <= passed.keys(), f"not passed to the container: {settings - passed.keys()}"
    assert "HEARTBEAT_FILE" not in passed, "the image sets it; an empty value would override it"


def test_passed_through_variables_stay_unset_when_unset(compose: dict[str, Any]) -> None:
    """``VAR:`` (no value) passes the shell's value or leaves VAR unset; ``${VAR:-}`` would set
    it to "" in the container, and ``GPTALK_MAX_USES=`` or ``LOG_LEVEL=`` are invalid."""
    env = environment(service(compose, "bot"))
    assert interpolate(env.pop("REDIS_URL") or "", {}) == "redis://redis:6379/0"
    token = env.pop("BOT_TOKEN")
    assert token is not None
    assert token.startswith("${BOT_TOKEN:?"), "compose should refuse to start without a token"
    # The health listener as the image sets it: a .env copied from .env.example
    # (HEALTH_PORT=, HEALTH_HOST=127.0.0.1) must not turn it off or hide it.
    fixed = {"HEALTH_PORT": "9090", "HEALTH_HOST": "0.0.0.0"}
    assert {name: value for name, value in env.items() if value is not None} == fixed


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_base_is_a_slim_python_by_default() -> None:
    """The base is an argument (CI builds on a local Debian base), a slim Python by default."""
    [base_arg] = [a for a in instruction("ARG") if a.startswith("BASE_IMAGE=")]
    default = base_arg.partition("=")[2]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", default), default
    froms = instruction("FROM")
    assert froms == ["${BASE_IMAGE}"]
    keywords = [keyword for keyword, _ in dockerfile()]
    assert keywords.index("ARG") < keywords.index("FROM")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    keywords = [keyword for keyword, _ in dockerfile()]
    users = instruction("USER")
    assert users, "no USER: the bot would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")


def test_dockerfile_health_check_runs_the_heartbeat_check() -> None:
    [healthcheck] = instruction("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert command, healthcheck
    argv = exec_form(command) if command.strip().startswith("[") else shlex.split(command)
    assert "bot.healthcheck" in argv
    assert argv[argv.index("bot.healthcheck") - 1] == "-m"
    assert argv[0] == VENV_PYTHON, "Debian's python3 has no `python`; the venv's has the bot"
    for option in ("--interval=30s", "--timeout=5s", "--start-period=30s", "--retries=3"):
        assert option in options.split()
    env = dockerfile_env()
    assert Path(env["HEARTBEAT_FILE"]) == DEFAULT_HEARTBEAT_FILE


def test_dockerfile_command_is_the_bot() -> None:
    [cmd] = instruction("CMD")
    assert exec_form(cmd) == [VENV_PYTHON, "-m", "bot"]
    assert not instruction("ENTRYPOINT")
    assert dockerfile_env()["PYTHONUNBUFFERED"] == "1"


def test_dockerfile_installs_the_package_without_tests() -> None:
    sources = {
        src.rstrip("/")
        for args in instruction("COPY")
        for src in shlex.split(args)[:-1]
        if not src.startswith("--")
    }
    assert {"pyproject.toml", "gptalk", "bot"} <= sources
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if isinstance(readme, str):
        assert readme in sources, "the build reads the readme named in pyproject.toml"
    assert not any(src.startswith("tests") or src == "." for src in sources)
    assert "uv.lock" in sources
    [run] = [run for run in instruction("RUN") if "uv sync" in run]
    sync = run.split("uv sync", 1)[1].split("&&", 1)[0].split()
    assert {"--locked", "--no-dev", "--no-editable"} <= set(sync), sync
    assert "pip install" not in run.replace('pip install --no-cache-dir "uv==', ""), run
    env = dockerfile_env()
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_PROJECT_ENVIRONMENT"] == str(Path(VENV_PYTHON).parent.parent)
    [uv_arg] = [a for a in instruction("ARG") if a.startswith("UV_VERSION=")]
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert f"UV_VERSION={uv_arg.partition('=')[2]}" in lib, "one uv version for every install"


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = {line.strip().rstrip("/") for line in lines if line.strip()}
    patterns = {p for p in patterns if not p.startswith("#")}
    for needed in (".env", ".git", ".venv", "tests", ".pytest_cache", ".mypy_cache"):
        assert needed in patterns, needed
    for copied in ("pyproject.toml", "README.md", "gptalk", "bot"):
        assert copied not in patterns, f"{copied} is needed by the build"


def test_replicas_profile_runs_three_webhook_replicas_behind_nginx(compose: dict[str, Any]) -> None:
    replicas = [service(compose, f"bot-{i}") for i in (1, 2, 3)]
    base = environment(service(compose, "bot"))
    for i, replica in enumerate(replicas, 1):
        assert replica["profiles"] == ["replicas"]
        assert replica["build"] == service(compose, "bot")["build"]
        env = environment(replica)
        assert env["REPLICA_ID"] == f"bot-{i}"
        assert env["REDIS_URL"] == base["REDIS_URL"]  # shared state: claims, budgets
        assert {k for k in base if k not in env} == set()
        assert env["WEBHOOK_URL"] is None  # from .env or the shell
    nginx = service(compose, "nginx")
    assert nginx["profiles"] == ["replicas"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for i in (1, 2, 3):
        assert f"server bot-{i}:8080" in conf
    assert "profiles" not in service(compose, "bot")


def test_replicas_are_probed_on_their_unpublished_health_port(compose: dict[str, Any]) -> None:
    image = dockerfile_env()
    assert (image["HEALTH_HOST"], image["HEALTH_PORT"]) == ("0.0.0.0", "9090")
    assert not instruction("EXPOSE")
    env = environment(service(compose, "bot"))
    assert (env["HEALTH_HOST"], env["HEALTH_PORT"]) == ("0.0.0.0", "9090")
    for i in (1, 2, 3):
        replica = service(compose, f"bot-{i}")
        env = environment(replica)
        # Set again: a .env copied from .env.example (HEALTH_PORT=) must not turn it off.
        assert (env["HEALTH_HOST"], env["HEALTH_PORT"]) == ("0.0.0.0", "9090")
        assert "ports" not in replica
        kind, python, flag, code = replica["healthcheck"]["test"]
        assert (kind, python, flag) == ("CMD", VENV_PYTHON, "-c")
        assert f"'http://127.0.0.1:{env['HEALTH_PORT']}/readyz'" in code
