#!/usr/bin/env bash
# The test suite: unit tests, then the end-to-end tests on real containers
# (a registry of their own, images built by build.sh, nginx).
#   scripts/test.sh [ARGS...]   the whole suite (what CI runs); ARGS go to
#                               every test binary (`-- NAME` filters)
#   scripts/test.sh quick       the unit tests and the core cycle end to end
#                               (build, start, upgrades, one under load, two
#                               failing successors), its images built
#                               without LTO: under 3 minutes, for every
#                               change
# The e2e runner's closing line is `N passed, N failed, N skipped`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The e2e suite asks nginx/build-image.sh for the image's name itself.
scripts/setup.sh >/dev/null
if [ "${1:-}" = quick ]; then
  [ $# -eq 1 ] || { echo "usage: scripts/test.sh quick (no filters: it runs a fixed set)" >&2; exit 2; }
  cargo test --locked --lib --bins --test layers
  # Its images are built with the quick profile (Cargo.toml): a change to
  # src/ relinks in seconds, where the release profile's LTO takes minutes.
  export SELFUP_PROFILE=${SELFUP_PROFILE:-quick}
  exec cargo test --locked --test e2e -- --quick
fi
cargo test --locked "$@"
