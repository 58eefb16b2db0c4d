#!/usr/bin/env bash
# Starts the registry on localhost:5000 (or $REGISTRY_ADDR) as a host process
# and waits until it answers. Every call needs credentials, reads included
# (htpasswd): the first start generates a password into $REGISTRY_STATE/auth/
# (a root-only directory), with the docker config.json selfup pulls with, and
# logs the Docker CLI in. Idempotent: an answering registry is left alone.
#   registry/start.sh            start
#   registry/start.sh stop       stop the one this script started
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
addr=${REGISTRY_ADDR:-127.0.0.1:5000}
state=${REGISTRY_STATE:-/var/lib/selfup-registry}
pidfile=$state/registry.pid
auth=$state/auth
# The name images carry (localhost:5000/selfup): the CLI finds credentials by it.
name=${REGISTRY_NAME:-localhost:${addr##*:}}

if [ "${1:-start}" = stop ]; then
  if [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill "$pid" 2>/dev/null; then
    # Gone before anyone deletes its data.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "registry stopped"
  fi
  rm -f "$pidfile"
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

code() { curl -s -o /dev/null -w '%{http_code}' --max-time "$1" "http://$addr/v2/" || true; }
case "$(code 2)" in
  401) echo "registry already answers on $addr"; exit 0 ;;
  200) echo "registry/start.sh: a registry without authentication answers on $addr; stop it first (registry/start.sh stop)" >&2; exit 1 ;;
esac
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
REGISTRY_NOTIFICATIONS_ENDPOINTS=$endpoints \
REGISTRY_HTTP_ADDR=$addr REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$state \
  REGISTRY_AUTH=htpasswd REGISTRY_AUTH_HTPASSWD_REALM=selfup REGISTRY_AUTH_HTPASSWD_PATH=$auth/htpasswd \
  setsid nohup docker-registry serve "$here/config.yml" >"$state/registry.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 100); do
  if [ "$(code 1)" = 401 ]; then
    echo "registry answers on $addr (credentials required)"
    exit 0
  fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || break
  sleep 0.1
done
echo "registry/start.sh: the registry did not come up; its log:" >&2
cat "$state/registry.log" >&2
exit 1
