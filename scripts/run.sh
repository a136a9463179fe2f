#!/usr/bin/env bash
# `make run`: start the whole stack in the foreground with honcho; Ctrl-C stops everything.
# Uses REDIS_URL when that Redis answers; otherwise starts a private redis-server in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"

redis_answers() {
  "$PY" - "$1" <<'PYEOF'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()
except Exception:
    sys.exit(1)
PYEOF
}

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
private_dir=""
cleanup() {
  if [ -n "$private_dir" ]; then
    [ -f "$private_dir/redis.pid" ] && kill "$(cat "$private_dir/redis.pid")" 2>/dev/null || true
    rm -rf "$private_dir"
  fi
}
trap cleanup EXIT

if redis_answers "$REDIS_URL"; then
  echo "herdless: using Redis at ${REDIS_URL//:*@/:***@}"
elif command -v redis-server >/dev/null 2>&1; then
  private_dir=$(mktemp -d -t herdless-redis.XXXXXX)
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$private_dir" \
    --daemonize yes --pidfile "$private_dir/redis.pid" --logfile "$private_dir/redis.log"
  REDIS_URL="redis://127.0.0.1:$port/0"
  for _ in $(seq 50); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
  echo "herdless: no Redis answered; started a private redis-server on port $port ($private_dir)"
else
  echo "herdless: no Redis answers at $REDIS_URL and no redis-server binary is installed." >&2
  echo "  Install one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)," >&2
  echo "  or point REDIS_URL at a running Redis, then run 'make run' again." >&2
  exit 1
fi
export REDIS_URL

# Validate settings once, up front, with a message naming any bad variable.
"$PY" -c 'from shared.settings import load_settings; from shared.namespaces import load_namespaces; load_namespaces(load_settings())'

# Flower never runs without authentication: generate credentials when none are given.
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
  FLOWER_BASIC_AUTH="herdless:$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')"
  echo "herdless: Flower on http://127.0.0.1:${FLOWER_PORT:-5555} — user herdless, password ${FLOWER_BASIC_AUTH#herdless:}"
fi
export FLOWER_BASIC_AUTH

export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$(mktemp -d -t herdless-metrics.XXXXXX)}"
honcho start -f Procfile "$@"
