#!/usr/bin/env bash
# Prints the path of a valkey-server (or redis-server) built with TLS, for the tests of
# `rediss://`; installs one into target/valkey-tls/ if none is found.
#
# Looks at $MOSAIC_VALKEY_TLS_SERVER, then at $MOSAIC_VALKEY_SERVER and valkey-server or
# redis-server on PATH (used if built with TLS). Otherwise, on Debian or Ubuntu, extracts the
# distribution's redis-server package (built with TLS, Redis 7.0 or newer) into target/valkey-tls/
# without installing it, so that it never shadows the valkey-server the rest of the suite uses.
# Progress goes to stderr, the path alone to stdout:
#   export MOSAIC_VALKEY_TLS_SERVER="$(deploy/ensure-valkey-tls.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

# Whether a server binary is linked with OpenSSL (a build with BUILD_TLS=yes is).
has_tls() {
  grep -q SSL_CTX_new "$(readlink -f "$1")" 2>/dev/null
}

if [[ -n "${MOSAIC_VALKEY_TLS_SERVER:-}" && -x "${MOSAIC_VALKEY_TLS_SERVER}" ]]; then
  echo "${MOSAIC_VALKEY_TLS_SERVER}"; exit 0
fi
candidates=()
[[ -n "${MOSAIC_VALKEY_SERVER:-}" && -x "${MOSAIC_VALKEY_SERVER}" ]] && candidates+=("$MOSAIC_VALKEY_SERVER")
for name in valkey-server redis-server; do
  if path="$(command -v "$name" 2>/dev/null)"; then candidates+=("$path"); fi
done
for c in "${candidates[@]}"; do
  if has_tls "$c"; then echo "$c"; exit 0; fi
done

dest="$PWD/target/valkey-tls"
bin="$dest/root/usr/bin/redis-server"
if [[ ! -x "$bin" ]]; then
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "ensure-valkey-tls: no valkey-server with TLS found; build Valkey with BUILD_TLS=yes and set MOSAIC_VALKEY_TLS_SERVER" >&2
    exit 1
  fi
  echo "ensure-valkey-tls: extracting Debian's redis-server (built with TLS) into $dest" >&2
  rm -rf "$dest" && mkdir -p "$dest"
  # The libraries it links against, without the server package itself.
  if [[ $(id -u) -eq 0 ]]; then
    if ! apt-get install -y -qq libjemalloc2 liblzf1 >/dev/null 2>&1; then
      apt-get update -qq >&2
      apt-get install -y -qq libjemalloc2 liblzf1 >&2
    fi
  fi
  cd "$dest"
  if ! apt-get download redis-tools >/dev/null 2>&1; then
    apt-get update -qq >&2
    apt-get download redis-tools >&2
  fi
  cd - >/dev/null
  for deb in "$dest"/*.deb; do dpkg -x "$deb" "$dest/root"; done
  ln -sf redis-check-rdb "$bin"
fi
if ! "$bin" --version >&2; then
  echo "ensure-valkey-tls: $bin does not run (missing libraries? ldd $bin)" >&2
  exit 1
fi
echo "$bin"
