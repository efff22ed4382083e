#!/bin/sh
# The compose federation's one-shot PKI and keys (the `pki-init` service of compose.yaml), run in
# the mosaic-hub image. It does what `mosaic-hub dev` does for a local federation:
#
#   mosaic-hub keygen --out hub            the hub's command-signing key
#   mosaic-hub keygen --out <spoke>        each spoke's receipt-signing key
#   mosaic-hub certs init …                a development CA and one certificate per hub and
#                                          spoke, each with one URI SAN spiffe://<td>/<role>/<id>
#   mosaic-hub token new …                 an admin token, whose hash goes in tokens.toml
#
# and then gives each service only what it needs, in its own volume mounted at
# /etc/mosaic/secrets (owned by uid 10001, private keys mode 0600):
#
#   hub:      tls.crt tls.key ca.crt signing.pem <spoke>.pub.pem… tokens.toml admin.token
#   <spoke>:  tls.crt tls.key ca.crt receipt.pem hub.pub.pem
#
# The CA key and the originals stay in the `pki` volume, which only this service mounts.
#
# Usage (compose runs `init`; it does nothing once the PKI exists):
#   pki-init.sh init
#   pki-init.sh token NAME ROLE WORKSPACE…   add a token to the hub's tokens file; prints it once
set -eu

TRUST_DOMAIN=${MOSAIC_TRUST_DOMAIN:-mosaic.local}
HUB=${MOSAIC_HUB_ID:-hub}
SPOKES=${MOSAIC_SPOKES:-spoke-a spoke-b}
OWNER=${MOSAIC_OWNER:-10001:10001}
DAYS=${MOSAIC_CERT_DAYS:-365}
PKI=${MOSAIC_PKI_DIR:-/pki}    # this service's own volume
OUT=${MOSAIC_OUT_DIR:-/out}    # /out/<hub id> and /out/<spoke id>: the services' volumes

log() { printf 'pki-init: %s\n' "$*" >&2; }

# add_token JSON NAME ROLE WORKSPACES_TOML: appends the tokens-file entry of a token made by
# `mosaic-hub -o json token new` (its JSON output) to the hub's tokens file; prints the token.
add_token() {
    json=$1
    shift
    token=$(printf '%s\n' "$json" | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p')
    hash=$(printf '%s\n' "$json" | sed -n 's/^ *"hash": *"\([^"]*\)".*/\1/p')
    if [ -z "$token" ] || [ -z "$hash" ]; then
        log "cannot read the output of mosaic-hub token new: $json"
        exit 1
    fi
    printf '%s\n' "$token"
    {
        printf '\n[[tokens]]\nname = "%s"\nhash = "%s"\nrole = "%s"\n' "$1" "$hash" "$2"
        printf 'workspaces = %s\n' "$3"
    } >>"$OUT/$HUB/tokens.toml"
}

# `"*"` or `["a", "b"]` from the workspace arguments.
workspaces_toml() {
    if [ "$#" -eq 1 ] && [ "$1" = '*' ]; then
        printf '"*"'
        return
    fi
    list=""
    for ws in "$@"; do list="$list${list:+, }\"$ws\""; done
    printf '[%s]' "$list"
}

# put SRC DEST MODE: copy into a service's volume, owned by the service's user.
put() {
    install -m "$3" "$1" "$2"
    chown "$OWNER" "$2"
}

init() {
    if [ -e "$PKI/complete" ]; then
        log "the PKI exists (volume pki); nothing to do. Remove the volumes to start afresh: docker compose down -v"
        return
    fi
    # Generate into a fresh staging directory so that a run that failed half-way can be repeated
    # (keygen and certs init never overwrite a file).
    rm -rf "$PKI/staging"
    mkdir -p "$PKI/staging/keys"
    cd "$PKI/staging"
    mosaic-hub keygen --out "keys/$HUB" >&2
    spoke_args=""
    for s in $SPOKES; do
        mosaic-hub keygen --out "keys/$s" >&2
        spoke_args="$spoke_args --spoke $s"
    done
    # shellcheck disable=SC2086 # one --spoke argument per word
    mosaic-hub certs init --out pki --trust-domain "$TRUST_DOMAIN" --days "$DAYS" \
        --hub "$HUB" $spoke_args >&2

    h="$OUT/$HUB"
    mkdir -p "$h"
    put pki/ca.crt "$h/ca.crt" 0644
    put "pki/hub-$HUB.crt" "$h/tls.crt" 0644
    put "pki/hub-$HUB.key" "$h/tls.key" 0600
    put "keys/$HUB.pem" "$h/signing.pem" 0600
    for s in $SPOKES; do
        put "keys/$s.pub.pem" "$h/$s.pub.pem" 0644
        d="$OUT/$s"
        mkdir -p "$d"
        put pki/ca.crt "$d/ca.crt" 0644
        put "pki/spoke-$s.crt" "$d/tls.crt" 0644
        put "pki/spoke-$s.key" "$d/tls.key" 0600
        put "keys/$s.pem" "$d/receipt.pem" 0600
        put "keys/$HUB.pub.pem" "$d/hub.pub.pem" 0644
    done
    printf '# The hub admin API tokens (hashes only). Written by pki-init.sh.\n' >"$h/tokens.toml"
    json=$(mosaic-hub -o json token new --name admin --role admin --workspace '*')
    add_token "$json" admin admin '"*"' >"$h/admin.token"
    chown "$OWNER" "$h/tokens.toml" "$h/admin.token"
    chmod 0644 "$h/tokens.toml"
    chmod 0600 "$h/admin.token"

    cd "$PKI"
    rm -rf ca && mv staging ca
    touch "$PKI/complete"
    log "wrote a development PKI for trust domain $TRUST_DOMAIN: hub $HUB, spokes $SPOKES"
    log "admin token: docker compose exec hub cat /etc/mosaic/secrets/admin.token"
}

token() {
    if [ "$#" -lt 3 ]; then
        log "usage: pki-init.sh token NAME viewer|operator|admin WORKSPACE… ('*' for all)"
        exit 2
    fi
    if [ ! -e "$PKI/complete" ]; then
        log "no PKI yet: run docker compose up first"
        exit 1
    fi
    name=$1 role=$2
    shift 2
    ws=$(workspaces_toml "$@")
    n=$#
    for w in "$@"; do set -- "$@" --workspace "$w"; done
    shift "$n"
    json=$(mosaic-hub -o json token new --name "$name" --role "$role" "$@")
    # The hub notices the changed file within a second.
    add_token "$json" "$name" "$role" "$ws"
}

cmd=${1:-init}
[ "$#" -gt 0 ] && shift
case "$cmd" in
    init) init ;;
    token) token "$@" ;;
    *)
        log "unknown command $cmd (init | token NAME ROLE WORKSPACE…)"
        exit 2
        ;;
esac
