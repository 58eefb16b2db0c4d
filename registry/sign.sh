#!/usr/bin/env bash
# Signs an image in the registry the way `cosign sign --key` does (a
# simple-signing payload and its ECDSA P-256 signature under the tag
# sha256-<hex>.sig of the same repository), with openssl and curl only:
#   registry/sign.sh localhost:5000/selfup:1.4.0
#   registry/sign.sh --init      only make the key pair, if there is none
# The key is $SELFUP_SIGNING_KEY (default $SELFUP_REGISTRY_AUTH/cosign.key,
# beside the registry's credentials), a PEM EC key generated on first use,
# root-only; its public half, cosign.pub beside it, is what selfup verifies
# with (verify_key). A registry that asks for credentials gets the ones
# registry/start.sh generated ($SELFUP_REGISTRY_AUTH/password, user
# $SELFUP_REGISTRY_USER or selfup), never on a command line. Prints the digest
# it signed. cosign can use the same key: `cosign import-key-pair --key
# cosign.key`, then `cosign sign --key import-cosign.key --tlog-upload=false`.
set -euo pipefail

die() { echo "sign.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: registry/sign.sh REGISTRY/REPOSITORY:TAG (or --init)"
image=$1
auth_dir=${SELFUP_REGISTRY_AUTH:-/var/lib/selfup-registry/auth}
key=${SELFUP_SIGNING_KEY:-$auth_dir/cosign.key}
pub=${key%.key}.pub

if [ ! -s "$key" ]; then
  command -v openssl >/dev/null || die "openssl is not installed"
  (umask 077; mkdir -p "$(dirname "$key")"; openssl ecparam -name prime256v1 -genkey -noout -out "$key" 2>/dev/null) \
    || die "generating the signing key $key failed"
  echo "sign.sh: generated the signing key $key (root-only) and its public key $pub" >&2
fi
[ -s "$pub" ] || openssl ec -in "$key" -pubout -out "$pub" 2>/dev/null || die "writing the public key $pub failed"
[ "$image" != --init ] || exit 0

registry=${image%%/*}
rest=${image#*/}
[ "$registry" != "$image" ] && [ -n "$rest" ] || die "'$image' names no registry (REGISTRY/REPOSITORY:TAG)"
case $rest in
  *@*) repository=${rest%@*}; reference=${rest#*@} ;;
  *:*) repository=${rest%:*}; reference=${rest##*:} ;;
  *) repository=$rest; reference=latest ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# curl's options come from a file (-K): the password is never on a command line.
: >"$work/curlrc"
chmod 600 "$work/curlrc"
if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$registry/v2/" || true)" = 401 ]; then
  [ -r "$auth_dir/password" ] || die "the registry at $registry asks for credentials and $auth_dir/password is not readable"
  printf 'user = "%s:%s"\n' "${SELFUP_REGISTRY_USER:-selfup}" "$(cat "$auth_dir/password")" >"$work/curlrc"
fi
api() { curl -sS --fail-with-body --max-time 30 -K "$work/curlrc" "$@"; }
base=http://$registry/v2/$repository

accept='application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json'
digest=$(api -I -H "Accept: $accept" "$base/manifests/$reference" | tr -d '\r' \
  | awk 'tolower($1) == "docker-content-digest:" { print $2 }') || true
[[ ${digest:-} =~ ^sha256:[0-9a-f]{64}$ ]] || die "the registry gave no digest for $image"

# The payload cosign signs (its field order), and its signature.
printf '{"critical":{"identity":{"docker-reference":"%s"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
  "$registry/$repository" "$digest" >"$work/payload"
openssl dgst -sha256 -sign "$key" -out "$work/signature" "$work/payload" || die "signing with $key failed"
signature=$(base64 -w0 <"$work/signature")

# Uploads a file as a blob; prints its digest and size.
upload() {
  local file=$1 sha location
  sha=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  location=$(api -X POST -D - -o /dev/null "$base/blobs/uploads/" | tr -d '\r' \
    | awk 'tolower($1) == "location:" { print $2 }')
  [ -n "$location" ] || die "the registry gave no upload location"
  case $location in http*) ;; *) location=http://$registry$location ;; esac
  case $location in *\?*) location="$location&digest=$sha" ;; *) location="$location?digest=$sha" ;; esac
  api -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" -o /dev/null "$location" \
    || die "uploading a blob failed"
  echo "$sha $(stat -c %s "$file")"
}
read -r payload_digest payload_size < <(upload "$work/payload")
printf '{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' \
  "$payload_digest" >"$work/config"
read -r config_digest config_size < <(upload "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%s,"digest":"%s"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":%s,"digest":"%s","annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
  "$config_size" "$config_digest" "$payload_size" "$payload_digest" "$signature" >"$work/manifest"
api -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$work/manifest" -o /dev/null \
  "$base/manifests/sha256-${digest#sha256:}.sig" || die "pushing the signature failed"
echo "$digest"
