#!/usr/bin/env bash
# Installed size of site-packages for `pip install -c constraints.txt .` (what the image
# installs: the runtime only) against `.[loadtest]`, each in a fresh venv. docs/containers.md's venv
# figures come from this script; it needs no Docker, so it measures a venv, not the image
# (scripts/image_size.sh measures the image itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work=$(mktemp -d -t herdless-size.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A copy of the project, so that building it leaves nothing in the work tree.
mkdir "$work/src"
cp -a pyproject.toml README.md shared web workers loadtest "$work/src/"
site() { "$work/$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
for name in bare runtime loadtest; do "$PYTHON" -m venv "$work/$name"; done
"$work/runtime/bin/pip" install --quiet -c constraints.txt "$work/src"
"$work/loadtest/bin/pip" install --quiet -c constraints.txt "$work/src[loadtest]"
echo "site-packages, $("$work/bare/bin/python" -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())'):"
for name in bare runtime loadtest; do
  printf '  %-9s %5s MiB\n' "$name" "$(du -sm "$(site "$name")" | cut -f1)"
done
echo "largest in loadtest and not in runtime (MiB):"
( cd "$(site loadtest)" && for entry in *; do [ -e "$(site runtime)/$entry" ] || du -sm "$entry"; done ) | sort -rn | head -8 | sed 's/^/  /'
