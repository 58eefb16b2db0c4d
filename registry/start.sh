#!/usr/bin/env bash
# Starts the registry as a host process on a unix socket in a directory only
# root can write ($REGISTRY_SOCKET, default /run/selfup-registry/registry.sock),
# which selfup calls the API at (registry_socket), and its door: a small
# nginx container (--restart always, host network) that holds the port the
# Engine pushes and pulls through ($REGISTRY_ADDR, default 127.0.0.1:5000,
# and [::1] on the same port) and passes every request to the socket. The
# door holds the port whenever Docker runs, the registry process or not, so
# no other local user can listen there and read the credentials. Every call
# needs credentials, reads included (htpasswd): the first start generates a
# password into $REGISTRY_STATE/auth/ (a root-only directory), with the docker
# config.json selfup pulls with. Idempotent: a registry answering on its
# socket is left alone (its door is started if it is not running).
#   registry/start.sh            start
#   registry/start.sh stop       stop the registry this script started, and remove its door
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
addr=${REGISTRY_ADDR:-127.0.0.1:5000}
state=${REGISTRY_STATE:-/var/lib/selfup-registry}
pidfile=$state/registry.pid
auth=$state/auth
socket=${REGISTRY_SOCKET:-/run/selfup-registry/registry.sock}
port=${addr##*:}
door=${REGISTRY_DOOR:-selfup-registry-door}
# The name images carry (localhost:5000/selfup): the CLI finds credentials by it.
name=${REGISTRY_NAME:-localhost:${addr##*:}}

if [ "${1:-start}" = stop ]; then
  if [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill "$pid" 2>/dev/null; then
    # Gone before anyone deletes its data.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "registry stopped"
  fi
  rm -f "$pidfile" "$socket"
  docker rm -f "$door" >/dev/null 2>&1 && echo "registry door $door removed"
  exit 0
fi

# The token the registry's push notifications carry to selfup's hook
# (hook_token): generated once, root-only, before anything else, so that
# compose has the file to mount even when the registry already runs (a
# registry started before the token existed sends no notifications until it
# is restarted: registry/start.sh stop; registry/start.sh).
mkdir -p "$auth"
chmod 700 "$state" "$auth"
if [ ! -s "$auth/hook_token" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$auth/hook_token")
  echo "registry: generated the notification token $auth/hook_token"
fi
# The key build.sh signs each pushed image with, and its public half that
# selfup runs only signed images by (verify_key): made once, like the token,
# so that compose has the public key to mount.
SELFUP_REGISTRY_AUTH=$auth "$here/sign.sh" --init
# Where the notifications go: nginx's deploy server (nginx/nginx.conf).
hook=${REGISTRY_HOOK_URL:-http://127.0.0.1:8081/hooks/registry}

# The socket's directory: only root may make a name there (nobody can stand
# in for the registry); anyone may connect (nginx's workers run as nobody),
# and gets the registry's 401 without the credentials.
sockdir=$(dirname "$socket")
mkdir -p "$sockdir"
chown root:root "$sockdir"
chmod 755 "$sockdir"
code() { local limit=$1; shift; curl -s -o /dev/null -w '%{http_code}' --max-time "$limit" "$@" || true; }
on_socket() { [ -S "$socket" ] && [ "$(stat -c %u "$socket")" = 0 ] && [ "$(code 2 --unix-socket "$socket" http://registry/v2/)" = 401 ]; }

# The door: nginx on the host network, holding the port on both loopback
# addresses for as long as Docker runs.
start_door() {
  local image conf=$state/door.conf listen="listen $addr;"
  image=${SELFUP_NGINX_IMAGE:-$("$here/../nginx/build-image.sh")}
  if [ "${addr%:*}" = 127.0.0.1 ] && grep -qs '^0\{31\}1 .* lo$' /proc/net/if_inet6; then
    listen="$listen listen [::1]:$port;"
  fi
  sed -e "s|@LISTEN@|$listen|" -e "s|@SOCKET@|$socket|" "$here/door.conf" >"$conf"
  if [ "$(docker inspect -f '{{.State.Running}}' "$door" 2>/dev/null)" != true ]; then
    docker rm -f "$door" >/dev/null 2>&1 || true
    docker run -d --name "$door" --restart always --network host ${REGISTRY_DOOR_LABEL:+--label "$REGISTRY_DOOR_LABEL"} \
      -v "$conf:/etc/nginx/nginx.conf:ro" -v "$sockdir:$sockdir:ro" "$image" >/dev/null
  fi
  for _ in $(seq 1 100); do
    [ "$(code 1 "http://$addr/v2/")" = 401 ] && { echo "registry door $door holds $addr"; return 0; }
    [ "$(docker inspect -f '{{.State.Running}}' "$door" 2>/dev/null)" = true ] || break
    sleep 0.1
  done
  echo "registry/start.sh: the door $door does not pass $addr to the registry; its log (another process may hold the port):" >&2
  docker logs --tail 10 "$door" >&2 || true
  exit 1
}

if on_socket; then
  echo "registry already answers on $socket"
  start_door
  exit 0
fi
# A registry this script started on the port itself (an earlier recipe):
# stopped, so that the door can take the port.
if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
  for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  echo "registry: stopped the one listening on $addr itself"
fi
command -v docker-registry >/dev/null || { echo "registry/start.sh: docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
command -v htpasswd >/dev/null || { echo "registry/start.sh: htpasswd is not installed (apt-get install apache2-utils)" >&2; exit 1; }

if [ ! -s "$auth/password" ]; then
  (umask 077
   head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$auth/password"
   # The password on stdin, never on a command line (any user may read /proc/<pid>/cmdline).
   htpasswd -iBn selfup < "$auth/password" > "$auth/htpasswd"
   # What selfup reads (docker_config): the same credentials, for both names of the registry.
   token=$(printf 'selfup:%s' "$(cat "$auth/password")" | base64 -w0)
   printf '{"auths":{"%s":{"auth":"%s"},"%s":{"auth":"%s"}}}\n' "$name" "$token" "$addr" "$token" > "$auth/config.json")
  echo "registry: generated its credentials in $auth (user selfup)"
fi

# registry/config.yml's endpoint, enabled and with the token (the variable
# replaces the whole list, as YAML).
endpoints="- name: selfup
  url: $hook
  headers:
    Authorization: [Bearer $(cat "$auth/hook_token")]
  timeout: 2s
  threshold: 3
  backoff: 2s
  ignoredmediatypes: [application/octet-stream]"
rm -f "$socket"
REGISTRY_NOTIFICATIONS_ENDPOINTS=$endpoints \
REGISTRY_HTTP_NET=unix REGISTRY_HTTP_ADDR=$socket REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$state \
  REGISTRY_AUTH=htpasswd REGISTRY_AUTH_HTPASSWD_REALM=selfup REGISTRY_AUTH_HTPASSWD_PATH=$auth/htpasswd \
  setsid nohup docker-registry serve "$here/config.yml" >"$state/registry.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 100); do
  if [ -S "$socket" ]; then
    chmod 666 "$socket"
    if on_socket; then
      echo "registry answers on $socket (credentials required)"
      start_door
      exit 0
    fi
  fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || break
  sleep 0.1
done
echo "registry/start.sh: the registry did not come up; its log:" >&2
cat "$state/registry.log" >&2
exit 1
