#!/usr/bin/env bash
# Build a local STAND-IN for the Dockerfile's base image, python:3.11-slim-bookworm, and tag it
# with that name: for a Docker engine that cannot pull from a registry. It is not the official
# image: Debian bookworm minbase (debootstrap) with Debian's python3 3.11.2 and pip 23.0.1
# (python3-pip, python3-venv), `python` and `pip` symlinked into /usr/local/bin as the official
# image has them, and EXTERNALLY-MANAGED removed, so `pip install` installs into
# /usr/local/lib/python3.11/dist-packages (the official image: .../site-packages). Trimmed like a
# slim image: no apt lists or cache, no man pages, locales or docs but copyrights, no __pycache__.
# The CA certificates of the host's /usr/local/share/ca-certificates (a TLS-inspecting proxy's,
# for instance) are added, so that pip reaches PyPI from `docker build` as it does on the host.
#
# Needs root, debootstrap and a Docker engine. Usage: sudo scripts/standin_python_base.sh
# (MIRROR overrides the Debian mirror, TAG the tag). Then `docker build -t herdless:local .`
set -euo pipefail
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
TAG="${TAG:-python:3.11-slim-bookworm}"
root=$(mktemp -d -t herdless-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root" # mktemp made it 0700: it is the image's /, which every user must traverse
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$root" "$MIRROR" >/dev/null
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi
(
  cd "$root"
  rm -rf var/cache/apt/*.bin var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/man/* \
    usr/share/info/* usr/share/locale/* usr/share/lintian var/log/*.log var/log/apt/*
  find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
  find usr/share/doc -type d -empty -delete
  rm -f usr/lib/python3.11/EXTERNALLY-MANAGED etc/resolv.conf etc/hostname
  ln -sf /usr/bin/python3 usr/local/bin/python
  ln -sf /usr/bin/pip3 usr/local/bin/pip
  find usr/lib/python3* -name __pycache__ -type d -prune -exec rm -rf {} +
)
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "local stand-in for $TAG: debootstrap minbase bookworm + Debian python3" \
  - "$TAG" >/dev/null
echo "$TAG (stand-in): $(docker image inspect --format '{{.Size}}' "$TAG") bytes"
