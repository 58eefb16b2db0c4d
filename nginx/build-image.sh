#!/usr/bin/env bash
# Builds the local nginx image (no public registry is reachable here) and
# prints its name: debootstrap a minimal Debian with nginx-light, import it,
# then nginx/Dockerfile adds the stop signal and the command.
#   nginx/build-image.sh       prints selfup/nginx:<recipe hash>, building it when missing
# The tag is a hash of the recipe (this script, the Dockerfile, the Debian
# suite), so an image built from an older recipe never stands in for this one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hash=$( { cat "$here/build-image.sh" "$here/Dockerfile"; echo "$suite"; } | sha256sum | cut -c1-12)
image=selfup/nginx:$hash
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

die() { # message log
  echo "nginx/build-image.sh: $1; the last lines of its log:" >&2
  tail -15 "$2" >&2
  echo "nginx/build-image.sh: rerun it with: nginx/build-image.sh" >&2
  exit 1
}
command -v debootstrap >/dev/null || { echo "nginx/build-image.sh: debootstrap is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "nginx/build-image.sh: building $image: debootstrap of Debian $suite with nginx-light (about a minute)" >&2
debootstrap --variant=minbase --include=nginx-light "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 \
  || die "debootstrap failed" "$work/log"
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
base=selfup/nginx-root:$hash
tar -C "$work/root" -c . | docker import - "$base" >"$work/log" 2>&1 || die "docker import failed" "$work/log"
mkdir "$work/context"
docker build -q -f "$here/Dockerfile" --build-arg "BASE=$base" -t "$image" "$work/context" >"$work/log" 2>&1 \
  || die "docker build failed" "$work/log"
echo "nginx/build-image.sh: built $image" >&2
echo "$image"
