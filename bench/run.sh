#!/usr/bin/env bash
# The benchmark, in one command: ./bench/run.sh [mosaic-bench flags], e.g. --rounds 3.
#
# Ensures a valkey-server (deploy/ensure-valkey.sh prints its path; exported as
# MOSAIC_VALKEY_SERVER), installs the BullMQ side's pinned packages if they are missing, then
# runs `mosaic-bench` built with --release. See BENCHMARKS.md for what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC_VALKEY_SERVER="$(deploy/ensure-valkey.sh)"
export MOSAIC_VALKEY_SERVER

rust_only=false
prev=""
for arg in "$@"; do
  if [[ "$arg" == "--only=rust" || ("$prev" == "--only" && "$arg" == "rust") ]]; then
    rust_only=true
  fi
  prev="$arg"
done
if [[ "$rust_only" == false && ! -d bench/bullmq/node_modules ]]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bench/run.sh: npm is not on PATH; install Node.js 18+ with npm (apt-get install nodejs npm), or pass --only rust" >&2
    exit 1
  fi
  npm ci --prefix bench/bullmq --no-audit --no-fund >&2
fi
exec cargo run --release -p mosaic-bench -- "$@"
