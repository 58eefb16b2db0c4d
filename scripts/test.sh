#!/usr/bin/env bash
# The whole test suite: unit tests, then the end-to-end tests on real
# containers (a registry of their own, images built by build.sh, nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked "$@"
