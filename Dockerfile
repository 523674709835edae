# gptalk-bot: the Telegram bot (python -m bot). Build: docker build -t gptalk-bot .
# Configuration comes from the environment at run time (see README, "Configuration");
# nothing secret is baked into the image (.env and tests are kept out by .dockerignore).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 HEARTBEAT_FILE=/tmp/gptalk-bot.heartbeat \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package is installed into site-packages; the sources are not kept in the image.
# (README.md is needed by the build: pyproject.toml names it as the readme.)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gptalk/ gptalk/
COPY bot/ bot/
RUN pip install --no-cache-dir . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bot

# An empty working directory: a .env mounted here (/app/.env) is read too.
WORKDIR /app
USER bot

# The bot rewrites HEARTBEAT_FILE every 15 s from its event loop; this checks its age.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "bot.healthcheck"]

# SIGTERM (docker stop): polling stops, running answers get SHUTDOWN_TIMEOUT seconds.
CMD ["python", "-m", "bot"]
