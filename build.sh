#!/usr/bin/env bash
# Builds and pushes one version of selfup:
#   ./build.sh 1.4.0
# builds a static binary that reports that version and a FROM-scratch image,
# tags it REGISTRY/IMAGE:1.4.0 and :latest, and pushes both. A pre-release
# (1.5.0-rc.1) is tagged and pushed as itself only, never :latest: selfup goes
# to it only when asked for it exactly (/upgrade/=1.5.0-rc.1).
# SELFUP_REGISTRY (default localhost:5000) and SELFUP_IMAGE (default selfup)
# say where to; SELFUP_IMAGE_LABELS (optional, space-separated key=value)
# adds labels to the image. SELFUP_FEATURES (default none) names cargo features
# to build with: the end-to-end tests' fault switches ("faults"), never a
# release. SELFUP_PROFILE (default release, built for size) names the cargo
# profile; o3 is the larger one it replaced (docs/switch.md), quick the one
# the quick test tier rebuilds in seconds. The version is
# written into the built binary's copy, so every version of one source tree is
# one build. A registry that asks for credentials gets the ones
# registry/start.sh generated (SELFUP_REGISTRY_AUTH, default
# /var/lib/selfup-registry/auth), through `docker login`. Each pushed image
# is signed by registry/sign.sh with the key beside those credentials
# (SELFUP_SIGNING_KEY, made on first use).
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: ./build.sh <semver version>, e.g. ./build.sh 1.4.0"
version=$1
# The semver 2.0.0 grammar (semver.org), without build metadata: Docker tags cannot hold '+'.
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?$'
[[ $version =~ $semver ]] || die "'$version' is not a semver version (MAJOR.MINOR.PATCH[-PRERELEASE]); nothing was built"
# The binary's version slot holds 64 bytes (src/lib.rs, VERSION_SLOT_LEN).
slot=64
[ ${#version} -le $slot ] || die "'$version' is longer than $slot characters; nothing was built"

registry=${SELFUP_REGISTRY:-localhost:5000}
image=${SELFUP_IMAGE:-selfup}
ref=$registry/$image

command -v docker >/dev/null || die "docker is not installed"
case "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$registry/v2/" || true)" in
  200) ;;
  401)
    # The registry asks for credentials: log in with the ones registry/start.sh
    # generated, where they are readable (otherwise an earlier `docker login` must do).
    password=${SELFUP_REGISTRY_AUTH:-/var/lib/selfup-registry/auth}/password
    if [ -r "$password" ]; then
      docker login "$registry" -u selfup --password-stdin <"$password" >/dev/null 2>&1 \
        || die "docker login $registry with $password failed; nothing was built"
    fi ;;
  *) die "the registry at $registry does not answer (start it with registry/start.sh); nothing was built" ;;
esac

# The version goes into the built binary's copy, not into the build: cargo
# builds the same binary for every version, and build.sh writes the version
# into its .selfup_version section (src/lib.rs, VERSION_SLOT) with objcopy.
# A new version of the same tree compiles and links nothing.
command -v objcopy >/dev/null || die "objcopy (binutils) is not installed; nothing was built"

target=x86_64-unknown-linux-gnu
# Both are needed for a static binary: crt-static, and an explicit --target
# so that proc-macros are still built for the host without it.
features=()
[ -z "${SELFUP_FEATURES:-}" ] || features=(--features "$SELFUP_FEATURES")
profile=${SELFUP_PROFILE:-release}
echo "build.sh: compiling selfup $version ($profile profile, static; the first build on a machine takes about 4 min, the next versions of the same tree seconds)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" --target "$target" --quiet "${features[@]}" \
  || die "the $profile build failed (its errors are above); rerun with: ./build.sh $version"
target_dir=${CARGO_TARGET_DIR:-target}
binary=$target_dir/$target/$profile/selfup

labels=()
for label in ${SELFUP_IMAGE_LABELS:-}; do labels+=(--label "$label"); done

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/selfup"
{ printf '%s' "$version"; head -c $((slot - ${#version})) /dev/zero; } >"$context/version"
objcopy --update-section ".selfup_version=$context/version" "$context/selfup" \
  || die "writing the version into the binary failed"
# The binary is static: it runs here, and says which version it is.
[ "$("$context/selfup" version)" = "selfup $version" ] \
  || die "the binary does not report $version after objcopy (it says: $("$context/selfup" version 2>&1))"
# A pre-release (a '-' in the version) is never :latest.
tags=("$ref:$version")
case $version in *-*) ;; *) tags+=("$ref:latest") ;; esac
tag_args=()
for tag in "${tags[@]}"; do tag_args+=(-t "$tag"); done
# The classic builder's deprecation notice is noise; show its output only on failure.
docker build --quiet -f docker/Dockerfile --build-arg "VERSION=$version" "${labels[@]}" \
  "${tag_args[@]}" "$context" >"$context/build.log" 2>&1 \
  || { cat "$context/build.log" >&2; die "docker build failed"; }
for tag in "${tags[@]}"; do docker push --quiet "$tag" >/dev/null; done
# Signed (cosign's format) with the operator's key: selfup runs nothing else.
digest=$(registry/sign.sh "$ref:$version") || die "signing $ref:$version failed; the image is pushed but unsigned"
size=$(docker image inspect -f '{{.Size}}' "$ref:$version" | numfmt --to=iec)
if [ ${#tags[@]} -eq 2 ]; then
  echo "built, pushed and signed $ref:$version and $ref:latest ($size image, $digest)"
else
  echo "built, pushed and signed $ref:$version ($size image, $digest); a pre-release is never :latest: upgrade to it with /upgrade/=$version"
fi
