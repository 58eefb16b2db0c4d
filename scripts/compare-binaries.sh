#!/usr/bin/env bash
# Compares the speed of two selfup binaries on this machine, A and B in turn
# for ROUNDS rounds, so that what else the machine runs weighs on both alike:
#   scripts/compare-binaries.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]   (defaults: 5 rounds, 5 s)
# Each binary serves on loopback as a plain process (no Docker, no nginx: the
# figures are the binary's own). Per round and binary: the start (exec to the
# first 200 from /health, polled every millisecond), then ApacheBench (`ab`,
# 8 clients for SECONDS each) on GET / with keep-alive, on GET / with a new
# connection per request, and on POST /echo (1 KiB) with keep-alive. Prints
# every round, then the median of each figure per binary.
set -euo pipefail

die() { echo "compare-binaries.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: scripts/compare-binaries.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]"
a=$(realpath "$1"); b=$(realpath "$2")
rounds=${3:-5}
seconds=${4:-5}
command -v ab >/dev/null || die "ab (ApacheBench, package apache2-utils) is not installed"
command -v python3 >/dev/null || die "python3 is not installed"
[ -x "$a" ] && [ -x "$b" ] || die "both binaries must exist and be executable"

work=$(mktemp -d)
pid=
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
head -c 1024 /dev/zero | tr '\0' x >"$work/body"

# Polls /health on port $1 every millisecond; prints the milliseconds since
# $2 (ns since the epoch) at the first 200.
cat >"$work/wait.py" <<'PY'
import http.client, sys, time
port, t0 = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/health")
        if c.getresponse().status == 200:
            print(f"{(time.time_ns() - t0) / 1e6:.1f}")
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.001)
sys.exit("no 200 from /health within 10 s")
PY

# A free loopback port; the pair's other port is the one above it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# ab's requests per second.
rate() { ab -q -c 8 -t "$seconds" -n 100000000 "$@" 2>/dev/null | awk '/^Requests per second/ {print $4}'; }

one() {
  local binary=$1 name=$2 t0 started ka new echo
  mkdir -p "$work/data"
  t0=$(date +%s%N)
  SELFUP_PORT=$port SELFUP_PORTS="[$port,$((port + 1))]" SELFUP_BIND=127.0.0.1 \
  SELFUP_CONTROL_SOCKET= SELFUP_LIVE_SOCKET= SELFUP_UPDATE_SOCKET= SELFUP_APP_SOCKET_DIR= \
  SELFUP_NGINX_CONTAINER= SELFUP_DATA_DIR="$work/data" SELFUP_DOCKER_CONFIG="$work/none.json" \
  SELFUP_HOOK_TOKEN_FILE="$work/none" SELFUP_CONFIG="$work/none.toml" \
    "$binary" serve >/dev/null 2>&1 &
  pid=$!
  started=$(python3 "$work/wait.py" "$port" "$t0") || die "$binary did not start"
  ka=$(rate -k "http://127.0.0.1:$port/")
  new=$(rate "http://127.0.0.1:$port/")
  echo=$(rate -k -p "$work/body" -T application/octet-stream "http://127.0.0.1:$port/echo")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  printf '%s start %s ms, GET / keep-alive %s req/s, GET / new connections %s req/s, POST /echo %s req/s\n' \
    "$name" "$started" "$ka" "$new" "$echo" | tee -a "$work/rows"
}

for round in $(seq "$rounds"); do
  echo "round $round"
  one "$a" A
  one "$b" B
done

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
echo
for name in A B; do
  rows=$(grep "^$name " "$work/rows")
  col() { echo "$rows" | sed -E "s|.*$1 ([0-9.]+).*|\1|" | median; }
  binary=$a; [ "$name" = A ] || binary=$b
  printf '%s median over %s rounds: start %s ms, GET / keep-alive %s req/s, new connections %s req/s, POST /echo %s req/s (%s)\n' \
    "$name" "$rounds" "$(col 'start')" "$(col 'GET / keep-alive')" "$(col 'GET / new connections')" "$(col 'POST /echo')" "$binary"
done
