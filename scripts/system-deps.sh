#!/usr/bin/env bash
# Install the system binaries the test suite drives for real, only when missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# The HTTP cache test suite (tests/httpcache_suite) runs on node; `make test` installs it with npm ci.
{ command -v node && command -v npm; } >/dev/null 2>&1 || need+=(nodejs npm)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v rabbitmqctl >/dev/null 2>&1 || need+=(rabbitmq-server)
nginx_missing=0
command -v nginx >/dev/null 2>&1 || { need+=(nginx-light); nginx_missing=1; }
start_rabbitmq() {
  # The broker test needs a RabbitMQ on 127.0.0.1:5672: start one when none answers.
  if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "starting rabbitmq-server"
    rabbitmq-server -detached
    for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0; sleep 1; done
    echo "rabbitmq-server did not start listening on 5672" >&2
    exit 1
  fi
}
if [ ${#need[@]} -eq 0 ]; then start_rabbitmq; exit 0; fi
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian packages may start their own services; the tests start private ones instead.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q prometheus 2>/dev/null; then
  $SUDO systemctl disable --now prometheus || true
fi
if [ "$nginx_missing" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now nginx 2>/dev/null || true
fi
start_rabbitmq
