# Shared by scripts/run, scripts/test and .ci/run: sourced, not executed.
# Installs what the project needs, so that a fresh clone works with no manual steps.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# ensure_venv [extra]: a virtualenv with the project installed (editable), plus the
# extra (e.g. dev). Re-installs only when pyproject.toml changed since last time.
ensure_venv() {
  local extra="${1:-}" spec="$ROOT" stamp
  [ -n "$extra" ] && spec="$ROOT[$extra]"
  stamp="$VENV/.installed${extra:+-$extra}"
  if [ ! -x "$PY" ]; then
    local base="${PYTHON:-python3}"
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
      return 1
    fi
    "$base" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$spec"
    touch "$stamp"
  fi
}

# ensure_redis: a redis-server binary (tests start their own private instance).
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "redis-server not found: installing Debian's redis-server package" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package starts a system instance; the tests never use it.
}

# ensure_nginx: Debian's nginx, for the test that runs deploy/nginx.conf in front of replicas.
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 && return 0
  [ -x /usr/sbin/nginx ] && return 0
  echo "nginx not found: installing Debian's nginx package" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
  # The package may start a system instance on port 80; the tests run their own.
}
