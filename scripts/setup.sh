#!/usr/bin/env bash
# Installs and starts what the demo and the tests need, on a fresh Debian
# machine with Docker Engine and a Rust toolchain: Debian packages, the
# registry on localhost:5000, and the locally built nginx image.
# Idempotent: what is already there is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in docker-registry debootstrap busybox-static apache2-utils curl docker-compose; do
  have_pkg "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

docker info >/dev/null 2>&1 || { echo "setup: the Docker daemon does not answer" >&2; exit 1; }
registry/start.sh
nginx/build-image.sh selfup/nginx:local
