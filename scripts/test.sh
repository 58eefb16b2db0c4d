#!/usr/bin/env bash
# The whole test suite: unit tests, then the end-to-end tests on real
# containers (a registry of their own, images built by build.sh, nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
# The e2e suite asks nginx/build-image.sh for the image's name itself.
scripts/setup.sh >/dev/null
cargo test --locked "$@"
