#!/usr/bin/env bash
# `make run`: the whole stack in the foreground (scripts/run_stack.py says how); Ctrl-C, SIGTERM
# or SIGHUP stops every process it started. `exec`, so that a signal to this script (or make's
# SIGTERM) reaches the supervisor itself.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/run_stack.py "$@"
