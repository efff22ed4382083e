#!/usr/bin/env bash
# Quickstart: a local federation (Valkey, hub identity, two spokes) with a demo, until Ctrl-C.
# Installs a valkey-server first if this machine has none. Extra arguments go to
# `mosaic-hub dev` (e.g. --exit-after-demo, --dir DIR, --no-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC_VALKEY_SERVER="$(deploy/ensure-valkey.sh)"
export MOSAIC_VALKEY_SERVER
exec cargo run --quiet -p mosaic-hub -- dev "$@"
