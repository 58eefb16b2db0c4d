#!/usr/bin/env bash
# The whole test suite: unit tests, then the end-to-end tests on real
# containers (a registry of their own, images built by build.sh, nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
SELFUP_NGINX_IMAGE=${SELFUP_NGINX_IMAGE:-$(scripts/setup.sh)}
export SELFUP_NGINX_IMAGE
cargo test --locked "$@"
