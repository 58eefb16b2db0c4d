#!/usr/bin/env bash
# Builds the local nginx image (no public registry is reachable here):
# debootstrap a minimal Debian with nginx-light, and import it.
#   nginx/build-image.sh [IMAGE]     default selfup/nginx:local
set -euo pipefail
image=${1:-selfup/nginx:local}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists"
  exit 0
fi
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=nginx-light "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'CMD ["nginx", "-g", "daemon off;"]' \
  --change 'STOPSIGNAL SIGQUIT' \
  --change "LABEL org.opencontainers.image.title=selfup-nginx" - "$image" >/dev/null
echo "built $image"
