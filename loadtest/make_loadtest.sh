#!/usr/bin/env bash
# `make loadtest`: compare the four strategies on the local stack and print the table.
# Uses the stack already listening on WEB_PORT; otherwise starts one (scripts/run.sh) with
# CACHE_TTL_SECONDS=${LOADTEST_TTL:-5} for the duration of the comparison and stops it afterwards.
# Either way `python -m loadtest compare` reads each namespace's TTL from the stack (GET
# /v1/namespaces, with ADMIN_TOKEN when set) and refuses to start while its origin's circuit
# breaker is open.
#
#   LOADTEST_RATE (200) req/s; LOADTEST_KEYS (20: few enough that naive's hot keys stampede at
#   200 req/s, measured 2.2x the ideal against xfetch's 1.00 on 2026-12-02); LOADTEST_DURATION s per namespace (unset: 10 s of warm-up plus 6 TTLs,
#   30 to 120 s); LOADTEST_NAMESPACES (unset: the shipped demo-naive,demo-lock,demo-swr,demo when the
#   stack has them, else every namespace it has); LOADTEST_TTL (unset: the stack's) s; LOADTEST_ARGS
#   extra arguments for `python -m loadtest compare`. A stack it starts gets a generated ADMIN_TOKEN
#   (unless one is set), so that the comparison can read each namespace's strategy and TTL, and a
#   private Redis.
# Ports and ADMIN_TOKEN come from the environment, then ENV_FILE (.env), as for `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# The stack's own settings: the shell's value, else .env's (what scripts/run_stack.py gives it).
eval "$("$PY" - <<'PYEOF'
import os, shlex
from dotenv import dotenv_values
path = os.environ.get("ENV_FILE") or ".env"
values = {k: v for k, v in (dotenv_values(path, interpolate=False) if os.path.isfile(path) else {}).items() if v}
for name in ("WEB_PORT", "ORIGIN_PORT", "WORKER_METRICS_PORT", "ADMIN_TOKEN"):
    if name not in os.environ and name in values:
        print(f"{name}={shlex.quote(values[name])}; export {name}")
PYEOF
)"
WEB_PORT="${WEB_PORT:-8000}"
ORIGIN_PORT="${ORIGIN_PORT:-9000}"
WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-9540}"
RATE="${LOADTEST_RATE:-200}"

answers() {
  "$PY" - "$1" <<'PYEOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1).read()
except Exception:
    sys.exit(1)
PYEOF
}

stack_pgid=""
cleanup() {
  if [ -n "$stack_pgid" ]; then
    echo "loadtest: stopping the stack it started"
    kill -TERM -- "-$stack_pgid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 -- "-$stack_pgid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$stack_pgid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if answers "http://127.0.0.1:$WEB_PORT/healthz"; then
  echo "loadtest: using the stack on port $WEB_PORT"
else
  TTL="${LOADTEST_TTL:-5}"
  mkdir -p .run
  echo "loadtest: no stack on port $WEB_PORT; starting one with CACHE_TTL_SECONDS=$TTL (log .run/loadtest-stack.log)"
  # A Redis of its own (make run starts one when REDIS_URL does not answer): nothing a previous
  # run left in a shared Redis (an open breaker, queued refreshes, held slots) is measured.
  REDIS_URL="redis://127.0.0.1:$("$PY" -c 'from launcher.processes import free_port; print(free_port())')/0"
  export REDIS_URL
  if [ -z "${ADMIN_TOKEN:-}" ]; then
    ADMIN_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    export ADMIN_TOKEN
  fi
  CACHE_TTL_SECONDS="$TTL" setsid ./scripts/run.sh >.run/loadtest-stack.log 2>&1 &
  stack_pgid=$!
  for _ in $(seq 120); do
    if answers "http://127.0.0.1:$WEB_PORT/readyz" && answers "http://127.0.0.1:$WORKER_METRICS_PORT/metrics" \
      && answers "http://127.0.0.1:$ORIGIN_PORT/stats"; then
      break
    fi
    if ! kill -0 "$stack_pgid" 2>/dev/null; then
      echo "loadtest: the stack did not start; see .run/loadtest-stack.log" >&2
      tail -20 .run/loadtest-stack.log >&2
      stack_pgid=""
      exit 1
    fi
    sleep 0.5
  done
fi

# shellcheck disable=SC2086 # LOADTEST_ARGS is split on purpose
"$PY" -m loadtest compare \
  --url "http://127.0.0.1:$WEB_PORT" \
  --origin-url "http://127.0.0.1:$ORIGIN_PORT" \
  --metrics-url "http://127.0.0.1:$WORKER_METRICS_PORT/metrics" \
  --rate "$RATE" --keys "${LOADTEST_KEYS:-20}" ${LOADTEST_DURATION:+--duration "$LOADTEST_DURATION"} \
  ${LOADTEST_NAMESPACES:+--namespaces "$LOADTEST_NAMESPACES"} ${LOADTEST_TTL:+--ttl "$LOADTEST_TTL"} ${LOADTEST_ARGS:-}
