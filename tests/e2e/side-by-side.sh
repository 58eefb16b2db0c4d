#!/usr/bin/env bash
# Two e2e runs at once on the same Docker Engine, to show that neither
# removes what the other made:
#   tests/e2e/side-by-side.sh [FILTER...]      (default: cycle:: faults:: leftovers::)
# The second run starts once the first has built its images (they share
# target/), so their tests overlap. Exits 0 only when both runs pass.
set -euo pipefail
cd "$(dirname "$0")/../.."

filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(cycle:: faults:: leftovers::)
SELFUP_NGINX_IMAGE=${SELFUP_NGINX_IMAGE:-$(nginx/build-image.sh)}
export SELFUP_NGINX_IMAGE
cargo test --locked --test e2e --no-run >/dev/null 2>&1

logs=$(mktemp -d)
: >"$logs/a.log"
: >"$logs/b.log"
cargo test --locked --test e2e -- "${filters[@]}" >"$logs/a.log" 2>&1 &
a=$!
until grep -q "suite ready" "$logs/a.log"; do
  kill -0 "$a" 2>/dev/null || { cat "$logs/a.log"; echo "side-by-side: the first run ended before it was ready" >&2; exit 1; }
  sleep 1
done
echo "side-by-side: $(date +%T) first run ready; starting the second" >&2
cargo test --locked --test e2e -- "${filters[@]}" >"$logs/b.log" 2>&1 &
b=$!
( until grep -q "suite ready" "$logs/b.log"; do kill -0 "$b" 2>/dev/null || exit 0; sleep 1; done
  echo "side-by-side: $(date +%T) second run ready" >&2 ) &
status=0
wait "$a" || status=1
echo "side-by-side: $(date +%T) first run ended" >&2
wait "$b" || status=1
echo "side-by-side: $(date +%T) second run ended" >&2
for run in a b; do
  echo "--- run $run: $(grep -c '\.\.\. ok' "$logs/$run.log") ok"
  grep -E '^(test .*FAILED|failed:|[0-9]+ passed)' "$logs/$run.log" || true
done
echo "logs in $logs"
exit $status
