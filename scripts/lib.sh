# Shared by scripts/run, scripts/test, scripts/upgrade, scripts/check-image and .ci/run:
# sourced, not executed. Installs what the project needs from uv.lock, so that a fresh clone
# works with no manual steps and every machine gets the same versions.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# uv comes from PyPI at this exact version, into a git-ignored tools venv (never from an
# installer script). Raise it deliberately, then run scripts/upgrade.
UV_VERSION=0.13.10
TOOLS="${TOOLS:-$ROOT/.tools}"
UV="$TOOLS/bin/uv"

# The lock is the only source of versions and of package addresses: nothing on this machine
# (uv.toml, UV_* index variables, pip's configuration) may add an index to it or to an install.
export UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$VENV"
unset UV_INDEX UV_INDEX_URL UV_DEFAULT_INDEX UV_EXTRA_INDEX_URL UV_FIND_LINKS UV_NO_INDEX

# The Python uv builds the venv with: PYTHON, or the first python3 on PATH; 3.11 or newer.
_python_base() {
  local base="${PYTHON:-python3}"
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
  fi
  command -v "$base"
}

# ensure_uv: the pinned uv in $TOOLS.
ensure_uv() {
  if [ -x "$UV" ] && [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" = "$UV_VERSION" ]; then
    return 0
  fi
  local base
  base="$(_python_base)" || return 1
  rm -rf "$TOOLS"
  "$base" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

# ensure_venv [dev]: $VENV synced from uv.lock (the project itself editable). With dev, the
# dev tools too (tests, lint, types, bench plots); without, the runtime dependencies, leaving
# dev tools a previous `ensure_venv dev` installed where they are. --locked fails when
# pyproject.toml and uv.lock disagree, instead of resolving anew.
ensure_venv() {
  ensure_uv || return 1
  local base
  base="$(_python_base)" || return 1
  if [ "${1:-}" = dev ]; then
    "$UV" sync --quiet --locked --python "$base" --extra dev
  else
    "$UV" sync --quiet --locked --python "$base" --inexact
  fi
}

# _apt_install PACKAGE: Debian's package, as root or through sudo.
_apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ensure_redis: a redis-server binary (tests start their own private instance).
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "redis-server not found: installing Debian's redis-server package" >&2
  _apt_install redis-server
  # The package starts a system instance; the tests never use it.
}

# ensure_nginx: Debian's nginx, for the test that runs deploy/nginx.conf in front of replicas.
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 && return 0
  [ -x /usr/sbin/nginx ] && return 0
  echo "nginx not found: installing Debian's nginx package" >&2
  _apt_install nginx
  # The package may start a system instance on port 80; the tests run their own.
}
