# gptalk-bot: the Telegram bot (python -m bot). Build: docker build -t gptalk-bot .
# Configuration comes from the environment at run time (see README, "Configuration");
# nothing secret is baked into the image (.env and tests are kept out by .dockerignore).
#
# BASE_IMAGE: any image with python3 (3.11+) and its venv module. CI builds on a local
# Debian base (scripts/check-image), since it cannot reach Docker Hub.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# uv at the version scripts/lib.sh pins; it installs exactly what uv.lock says.
ARG UV_VERSION=0.13.10

# Health and metrics get a listener of their own (HEALTH_HOST:HEALTH_PORT), reachable from
# other containers for readiness checks but not published: the deployment does not need it
# on the host. The webhook listener serves the webhook path only.
ENV PYTHONUNBUFFERED=1 HEARTBEAT_FILE=/tmp/gptalk-bot.heartbeat \
    HEALTH_HOST=0.0.0.0 HEALTH_PORT=9090 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy

# The package is installed into /opt/venv from the lock; the sources and uv are not kept.
# (README.md is needed by the build: pyproject.toml names it as the readme.)
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY gptalk/ gptalk/
COPY bot/ bot/
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
    && /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-cache --python python3 \
    && cd / && rm -rf /src /opt/uv \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bot

# An empty working directory: a .env mounted here (/app/.env) is read too.
WORKDIR /app
USER bot

# The bot rewrites HEARTBEAT_FILE every 15 s from its event loop; this checks its age.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "bot.healthcheck"]

# SIGTERM (docker stop): polling stops, running answers get SHUTDOWN_TIMEOUT seconds.
CMD ["/opt/venv/bin/python", "-m", "bot"]
