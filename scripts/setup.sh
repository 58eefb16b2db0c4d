#!/usr/bin/env bash
# Installs and starts what the demo and the tests need, on a fresh Debian
# machine with Docker Engine and a Rust toolchain: Debian packages, the
# locally built nginx image, and the registry on its socket with its door on
# localhost:5000 (an nginx container: the image comes first).
# Idempotent: what is already there is left alone. Each slow step says so
# before it starts; a failing one shows its log's last lines and how to rerun.
#   scripts/setup.sh        prints the nginx image's name last, on stdout
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() { # what
  echo "setup: $1 failed; the last lines of its log:" >&2
  tail -15 "$log" >&2
  echo "setup: rerun with: scripts/setup.sh" >&2
  exit 1
}

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in docker-registry debootstrap busybox-static apache2-utils curl docker-compose openssl; do
  have_pkg "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]} (about 30 s)" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 \
    || fail "apt-get install ${missing[*]}"
fi

docker info >/dev/null 2>&1 || { echo "setup: the Docker daemon does not answer (is dockerd running?)" >&2; exit 1; }
image=$(nginx/build-image.sh)
SELFUP_NGINX_IMAGE=$image registry/start.sh >&2
echo "$image"
