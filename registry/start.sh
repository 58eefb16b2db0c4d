#!/usr/bin/env bash
# Starts the registry on localhost:5000 (or $REGISTRY_ADDR) as a host process
# and waits until it answers. Idempotent: an answering registry is left alone.
#   registry/start.sh            start
#   registry/start.sh stop       stop the one this script started
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
addr=${REGISTRY_ADDR:-127.0.0.1:5000}
state=${REGISTRY_STATE:-/var/lib/selfup-registry}
pidfile=$state/registry.pid

if [ "${1:-start}" = stop ]; then
  if [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill "$pid" 2>/dev/null; then
    # Gone before anyone deletes its data.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "registry stopped"
  fi
  rm -f "$pidfile"
  exit 0
fi

if curl -fs --max-time 2 -o /dev/null "http://$addr/v2/"; then
  echo "registry already answers on $addr"
  exit 0
fi
command -v docker-registry >/dev/null || { echo "registry/start.sh: docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
mkdir -p "$state"
REGISTRY_HTTP_ADDR=$addr REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$state \
  setsid nohup docker-registry serve "$here/config.yml" >"$state/registry.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 100); do
  if curl -fs --max-time 1 -o /dev/null "http://$addr/v2/"; then echo "registry answers on $addr"; exit 0; fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || break
  sleep 0.1
done
echo "registry/start.sh: the registry did not come up; its log:" >&2
cat "$state/registry.log" >&2
exit 1
