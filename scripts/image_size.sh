#!/usr/bin/env bash
# Installed size of the container image: the Dockerfile as it is (runtime dependencies only)
# against the same Dockerfile installing the `loadtest` extra too, as the image was before the
# load tester moved into that extra. Prints each image's size, the base image's, what the
# herdless layers add to it, and `du` of site-packages inside each image. docs/containers.md's image
# figures come from this script; scripts/install_size.sh measures venvs where no Docker is.
#
# Needs a Docker engine and the Dockerfile's base image (pulled, or built locally where no
# registry can be reached: scripts/standin_python_base.sh). Builds herdless:size-runtime and
# herdless:size-loadtest and removes them afterwards (KEEP_IMAGES=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d -t herdless-image-size.XXXXXX)
cleanup() {
  rm -rf "$work"
  [ "${KEEP_IMAGES:-0}" = 1 ] || docker rmi herdless:size-runtime herdless:size-loadtest >/dev/null 2>&1 || true
}
trap cleanup EXIT
base=$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' Dockerfile | head -1)
# The "before" Dockerfile: the dependency list that the RUN line prints gets the extra appended.
runtime_deps="['project']['dependencies']"
grep -qF "$runtime_deps" Dockerfile || { echo "Dockerfile no longer reads $runtime_deps" >&2; exit 1; }
python3 - "$work/Dockerfile.loadtest" <<'EOF'
import sys

text = open("Dockerfile").read().replace(
    "['project']['dependencies']",
    "['project']; deps = deps['dependencies'] + deps['optional-dependencies']['loadtest']",
    1,
)
open(sys.argv[1], "w").write(text)
EOF
echo "building herdless:size-runtime and herdless:size-loadtest on $base (logs in $work while it runs)" >&2
docker build -t herdless:size-runtime . >"$work/runtime.log" 2>&1 || { cat "$work/runtime.log" >&2; exit 1; }
docker build -f "$work/Dockerfile.loadtest" -t herdless:size-loadtest . >"$work/loadtest.log" 2>&1 ||
  { cat "$work/loadtest.log" >&2; exit 1; }

size() { docker image inspect --format '{{.Size}}' "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
site_du() {
  docker run --rm --entrypoint sh "$1" -c \
    'du -sm "$(python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")"' | cut -f1
}
base_bytes=$(size "$base")
echo "base $base: $(mib "$base_bytes") MiB ($base_bytes bytes)"
printf '%-24s %10s %14s %22s\n' image "size MiB" "herdless MiB" "site-packages du MiB"
for tag in herdless:size-runtime herdless:size-loadtest; do
  bytes=$(size "$tag")
  printf '%-24s %10s %14s %22s\n' "$tag" "$(mib "$bytes")" "$(mib $((bytes - base_bytes)))" "$(site_du "$tag")"
done
echo "site-packages: $(docker run --rm --entrypoint python herdless:size-runtime -c \
  'import platform, sysconfig; print(sysconfig.get_paths()["purelib"], "Python", platform.python_version())')"
