#!/usr/bin/env bash
# The operator's cycle, end to end: registry, build 1.0.0, start with
# compose, build 1.1.0, upgrade, and the answers through both ports and nginx.
#   scripts/demo.sh          run it (leaves selfup and nginx running)
#   scripts/demo.sh down     stop and remove them, and stop the registry and its door
#   scripts/demo.sh purge    remove everything the project made on this machine
#                            (containers, images, volumes, networks, the registry
#                            and its data), so that the Quick start runs as new
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose() { "${compose[@]}" -f docker/compose.yml -p selfup "$@"; }
# Remove the project's containers, including successors compose did not create.
down() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  ids=$(docker ps -aq --filter label=com.docker.compose.project=selfup)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
}
# Everything the project made: the demo's, the test suite's (label selfup.e2e),
# every image built from its recipes (their title label), and the registry.
purge() {
  down
  docker ps -aq --filter label=selfup.e2e | xargs -r docker rm -f -v >/dev/null
  docker network ls -q --filter label=selfup.e2e | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter label=selfup.e2e | xargs -r docker volume rm -f >/dev/null
  docker volume rm -f selfup_data >/dev/null 2>&1 || true
  # The registry and its door first: the door runs the nginx image.
  registry/start.sh stop >/dev/null
  # Twice: an image that is the parent of another (the nginx image's imported
  # root) can only go once its child has gone.
  for _ in 1 2; do
    {
      docker images -q --filter label=selfup.e2e
      docker images -q --filter label=org.opencontainers.image.title=selfup
      docker images -q --filter label=org.opencontainers.image.title=selfup-nginx
      docker images -q 'selfup/*'
      docker images -q 'localhost:5000/*'
    } | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
  done
  docker logout localhost:5000 >/dev/null 2>&1 || true
  rm -rf "${REGISTRY_STATE:-/var/lib/selfup-registry}" /run/selfup /run/selfup-public /run/selfup-registry
}
case "${1:-}" in
  # The registry and its door too (its data and credentials stay): the port
  # is free again, and scripts/setup.sh starts both at the next run.
  down) down; registry/start.sh stop >/dev/null; echo "selfup and nginx removed, the registry stopped"; exit 0 ;;
  purge) purge; echo "removed every container, image, volume and network of the project, and the registry with its data"; exit 0 ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [down|purge]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
wait_for() { # url text
  for _ in $(seq 1 200); do curl -fs --max-time 1 "$1" 2>/dev/null | grep -q "$2" && return 0; sleep 0.1; done
  echo "demo: $1 never answered '$2'" >&2; return 1
}

SELFUP_NGINX_IMAGE=${SELFUP_NGINX_IMAGE:-$(scripts/setup.sh)}
export SELFUP_NGINX_IMAGE
down
for port in 5800 5801 8080 8081; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "demo: port $port is already in use" >&2; exit 1; fi
done

say ./build.sh 1.0.0; ./build.sh 1.0.0
say "${compose[*]}" -f docker/compose.yml -p selfup up -d; compose up -d
wait_for http://127.0.0.1:8080/ "version 1.0.0"
say curl localhost:5800; curl -s localhost:5800
say ./build.sh 1.1.0; ./build.sh 1.1.0
say curl localhost:5800/upgrade
echo "(1.1.0 takes the traffic at once; the answer comes when the 30 s bake is over: bake_secs, docs/bake.md)"
curl -s localhost:5800/upgrade; echo
say curl localhost:5801; curl -s localhost:5801
say curl localhost:8080; curl -s localhost:8080
# The elder answers its own port until its linger (4.5 s) and its drain end.
wait_for_one() {
  for _ in $(seq 1 200); do
    [ "$(docker ps -aq --filter label=com.docker.compose.project=selfup --filter label=com.docker.compose.service=selfup | wc -l)" = 1 ] && return 0
    sleep 0.1
  done
}
wait_for_one
say curl localhost:5800; curl -s --max-time 2 localhost:5800 || echo "(nothing listens on 5800 any more)"
say "${compose[*]}" -f docker/compose.yml -p selfup ps; compose ps
echo
echo "selfup 1.1.0 is live on 5801 behind nginx on 8080; ./build.sh 1.2.0 && curl localhost:5801/upgrade goes back to 5800."
echo "scripts/demo.sh down removes it."
