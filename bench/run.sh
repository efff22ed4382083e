#!/usr/bin/env bash
# The benchmarks, in one command: ./bench/run.sh [mosaic-bench flags], e.g. --rounds 3 or
# --only events.
#
# Ensures a valkey-server (deploy/ensure-valkey.sh prints its path; exported as
# MOSAIC_VALKEY_SERVER), installs the BullMQ side's pinned packages if they are missing and that
# side runs, builds the `mosaic-hub` binary if the events benchmark runs (it measures a real
# `mosaic-hub serve` process), then runs `mosaic-bench` built with --release. See BENCHMARKS.md
# for what they measure.
set -euo pipefail
cd "$(dirname "$0")/.."
MOSAIC_VALKEY_SERVER="$(deploy/ensure-valkey.sh)"
export MOSAIC_VALKEY_SERVER

only=""
prev=""
for arg in "$@"; do
  case "$arg" in
    --only=*) only="${arg#--only=}" ;;
    *) if [[ "$prev" == "--only" ]]; then only="$arg"; fi ;;
  esac
  prev="$arg"
done
if [[ ( "$only" == "" || "$only" == "bullmq" ) && ! -d bench/bullmq/node_modules ]]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bench/run.sh: npm is not on PATH; install Node.js 18+ with npm (apt-get install nodejs npm), or pass --only rust or --only events" >&2
    exit 1
  fi
  npm ci --prefix bench/bullmq --no-audit --no-fund >&2
fi
if [[ "$only" == "" || "$only" == "events" ]]; then
  # Same profile and target directory as `cargo run` below, so mosaic-bench finds it beside
  # itself.
  cargo build --release -p mosaic-hub --bin mosaic-hub
fi
exec cargo run --release -p mosaic-bench --bin mosaic-bench -- "$@"
