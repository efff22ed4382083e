#!/usr/bin/env python3
"""The checks of deploy/ that no generic tool makes: that the files fit this software.

deploy/validate.sh runs the generic tools first (hadolint, the compose-spec schema, the
Kubernetes schemas, systemd-analyze, the cert-manager models), then this, one part at a time:

  check.py dockerfile                Dockerfile and /.dockerignore: COPY sources exist and are
                                     sent; targets hub and spoke; non-root; pinned bases
  check.py config                    every *.toml under deploy/: keys the Rust code accepts
  check.py compose                   compose.yaml with its configs and pki-init.sh
  check.py k8s RENDERED.yaml         the kustomize output with its configs
  check.py systemd                   the units' commands, hardening and stop timeout
  check.py grafana                   the dashboard's JSON, metrics and labels

Each problem is printed as `FILE: what is wrong`, and the exit status is 1 if there was one.
Needs Python 3.11 (tomllib) and PyYAML.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROBLEMS: list[str] = []
NOTES: list[str] = []


def rel(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def fail(where: Path | str, message: str) -> None:
    PROBLEMS.append(f"{rel(where) if isinstance(where, Path) else where}: {message}")


def note(message: str) -> None:
    NOTES.append(message)


# ---------------------------------------------------------------------------------------------
# Config keys, read from the Rust source: `struct Raw…` with `deny_unknown_fields`.

# Keys the deploy files use that the code is gaining in the same change (issue 6). While a key
# is missing from the source it is a note, not a failure; once the code has it, it is checked
# like any other. Empty this once they have landed.
PENDING_KEYS: set[tuple[str, str]] = set()


def _rust_structs(*files: Path) -> dict[str, dict]:
    """name -> {"default": bool, "fields": {name: (type, has_default)}} for every struct."""
    structs: dict[str, dict] = {}
    for f in files:
        text = f.read_text()
        for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?struct\s+(\w+)\s*\{(.*?)\n\}",
                             text, re.S):
            attrs, name, body = m.group(1), m.group(2), m.group(3)
            struct_default = bool(re.search(r"serde\([^)]*\bdefault\b", attrs))
            fields: dict[str, tuple[str, bool]] = {}
            pending_attrs = ""
            depth = 0
            for line in body.splitlines():
                s = line.strip()
                if not s or s.startswith("//"):
                    continue
                if s.startswith("#["):
                    pending_attrs += s
                    continue
                fm = re.match(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*(.+?),?$", s)
                if fm and depth == 0:
                    fields[fm.group(1)] = (fm.group(2), "default" in pending_attrs)
                depth += s.count("<") - s.count(">")
                depth = max(depth, 0)
                pending_attrs = ""
            structs[name] = {"default": struct_default, "fields": fields}
    return structs


def _schema(struct: str, structs: dict[str, dict]) -> dict:
    """key -> ("leaf"|"table"|"list"|"map", sub-schema or None, required)."""
    out = {}
    info = structs[struct]
    for key, (ty, has_default) in info["fields"].items():
        t = ty.replace(" ", "")
        optional = False
        while t.startswith("Option<"):
            t, optional = t[len("Option<"):-1], True
        kind, inner = "leaf", None
        base = t.split("::")[-1]
        if base.startswith("Vec<"):
            elem = base[4:-1].split("::")[-1]
            kind, inner = "list", (_schema(elem, structs) if elem in structs else None)
        elif re.match(r"(BTreeMap|HashMap)<", base):
            val = base[base.index(",") + 1:-1].split("::")[-1]
            kind, inner = "map", (_schema(val, structs) if val in structs else None)
        elif base in structs:
            kind, inner = "table", _schema(base, structs)
        required = not (optional or has_default or info["default"])
        out[key] = (kind, inner, required)
    return out


def config_schemas() -> dict[str, dict]:
    tls = ROOT / "shared/src/tls.rs"
    hub = _rust_structs(ROOT / "hub/src/config.rs", tls)
    spoke = _rust_structs(ROOT / "spoke/src/config.rs", tls)
    return {"hub": _schema("Raw", hub), "spoke": _schema("Raw", spoke)}


def check_keys(where: Path, role: str, data: dict, schema: dict, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            if not prefix and (role, key) in PENDING_KEYS:
                note(f"{rel(where)}: key {path} is not in the {role}'s config code yet "
                     f"(expected from issue 6; deploy/validate/check.py PENDING_KEYS)")
                continue
            fail(where, f"unknown key {path} (the {role} rejects unknown keys at start-up)")
            continue
        kind, inner, _ = schema[key]
        if kind == "table":
            if not isinstance(value, dict):
                fail(where, f"{path} must be a table")
            else:
                check_keys(where, role, value, inner, path + ".")
        elif kind == "list" and inner is not None:
            if not isinstance(value, list):
                fail(where, f"{path} must be an array")
            else:
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        check_keys(where, role, item, inner, f"{path}[{i}].")
        elif kind == "map" and inner is not None:
            if isinstance(value, dict):
                for k, item in value.items():
                    if isinstance(item, dict):
                        check_keys(where, role, item, inner, f"{path}.{k}.")
    for key, (kind, _, required) in schema.items():
        if required and key not in data:
            fail(where, f"missing required key {prefix}{key}")


def role_of(data: dict) -> str | None:
    if "spoke_id" in data:
        return "spoke"
    if "hub_id" in data:
        return "hub"
    return None


def load_toml(where: Path, text: str) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"not valid TOML: {e}")
        return None


def check_config_text(where: Path, text: str, schemas: dict) -> tuple[str, dict] | None:
    data = load_toml(where, text)
    if data is None:
        return None
    role = role_of(data)
    if role is None:
        fail(where, "neither spoke_id nor hub_id: not a spoke.toml or hub.toml")
        return None
    check_keys(where, role, data, schemas[role])
    return role, data


def cmd_config() -> None:
    schemas = config_schemas()
    files = sorted(p for p in DEPLOY.rglob("*.toml") if "node_modules" not in p.parts)
    for f in files:
        if f.name == "tokens.toml":
            continue
        check_config_text(f, f.read_text(), schemas)
        print(f"  {rel(f)}")


# ---------------------------------------------------------------------------------------------
# Facts about one config, shared by the compose and Kubernetes checks.

def ms(data: dict, key: str, default: int) -> int:
    v = data.get(key, default)
    return v if isinstance(v, int) else default


def config_paths(role: str, data: dict) -> list[tuple[str, str]]:
    """(key, absolute path) of every file a config names."""
    out = []
    for k in ("cert", "key", "ca"):
        if k in data.get("tls", {}):
            out.append((f"tls.{k}", data["tls"][k]))
    if role == "spoke":
        out.append(("receipt_key", data.get("receipt_key", "")))
        for i, h in enumerate(data.get("trusted_hubs", [])):
            for j, k in enumerate(h.get("keys", [])):
                out.append((f"trusted_hubs[{i}].keys[{j}]", k))
    else:
        out.append(("signing_key", data.get("signing_key", "")))
        if "tokens" in data:
            out.append(("tokens", data["tokens"]))
        for i, s in enumerate(data.get("spokes", [])):
            out.append((f"spokes[{i}].receipt_key", s.get("receipt_key", "")))
    return out


def workdirs(data: dict) -> list[tuple[str, str]]:
    return [(f"profiles.{n}.workdir_root", p.get("workdir_root", ""))
            for n, p in data.get("profiles", {}).items()]


def port_of(addr: str) -> int | None:
    m = re.search(r":(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def host_of(addr: str) -> str:
    return re.sub(r":\d+$", "", addr or "")


def stop_budget_s(data: dict) -> float:
    """Seconds a spoke may take to stop: the drain, then the longest kill grace, then 2 s for
    open connections and a margin of 5 s."""
    drain = ms(data, "drain_deadline_ms", 30000)
    grace = max([ms(p, "kill_grace_ms", 10000) for p in data.get("profiles", {}).values()] or [0])
    return (drain + grace) / 1000 + 2 + 5


def spiffe(data: dict, role: str) -> str:
    ident = data.get("spoke_id") if role == "spoke" else data.get("hub_id")
    return f"spiffe://{data.get('trust_domain')}/{role}/{ident}"


def under(path: str, mounts: list[tuple[str, object]]):
    """The mount (destination, info) holding `path`, the longest destination first."""
    best = None
    for dest, info in mounts:
        d = dest.rstrip("/")
        if path == d or path.startswith(d + "/"):
            if best is None or len(d) > len(best[0]):
                best = (d, info)
    return best


def check_federation(where: str, procs: list[tuple[str, str, dict]]) -> None:
    """Hub and spokes agree: trust domain, hub id trusted, every spoke configured once."""
    hubs = [(n, d) for n, r, d in procs if r == "hub"]
    spokes = {d.get("spoke_id"): n for n, r, d in procs if r == "spoke"}
    tds = {d.get("trust_domain") for _, _, d in procs}
    if len(tds) > 1:
        fail(where, f"the configs disagree on trust_domain: {sorted(map(str, tds))}")
    for hname, hub in hubs:
        listed = [s.get("id") for s in hub.get("spokes", [])]
        for sid, sname in spokes.items():
            if sid not in listed:
                fail(where, f"spoke {sid} ({sname}) is not in {hname}'s hub.toml spokes")
        for sid in listed:
            if sid not in spokes:
                fail(where, f"{hname}'s hub.toml lists spoke {sid}, which is not deployed here")
        for n, r, d in procs:
            if r == "spoke" and hub.get("hub_id") not in [h.get("hub_id") for h in d.get("trusted_hubs", [])]:
                fail(where, f"{n} does not trust hub {hub.get('hub_id')}")
        if hub.get("command_ttl_ms", 60000) > min(
                [ms(d, "max_command_validity_ms", 600000) for _, r, d in procs if r == "spoke"] or [10**9]):
            fail(where, "the hub's command_ttl_ms exceeds a spoke's max_command_validity_ms")


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore.

def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    out, buf, start = [], "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    pats = []
    f = ROOT / ".dockerignore"
    if not f.exists():
        return pats
    for line in f.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        s = s[1:] if neg else s
        s = str(PurePosixPath(s.strip("/")))
        rx, i = "", 0
        while i < len(s):
            if s.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif s.startswith("**", i):
                rx += ".*"
                i += 2
            elif s[i] == "*":
                rx += "[^/]*"
                i += 1
            elif s[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(s[i])
                i += 1
        pats.append((neg, re.compile(rx + r"(?:/.*)?\Z")))
    return pats


def dockerignored(relpath: str, pats) -> bool:
    ignored = False
    for neg, rx in pats:
        if rx.match(relpath):
            ignored = not neg
    return ignored


def cmd_dockerfile() -> None:
    df = DEPLOY / "docker/Dockerfile"
    ins = dockerfile_instructions(df)
    pats = dockerignore_patterns()
    if not pats:
        fail(ROOT / ".dockerignore", "missing: the build would send target/ and .git/ as context")
    args = {}
    stages: dict[str, dict] = {}
    cur = None
    for line, word, rest in ins:
        where = f"{rel(df)}:{line}"
        if word == "ARG" and cur is None:
            k, _, v = rest.partition("=")
            args[k] = v
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            parent = stages.get(image)
            if parent is None:
                if ":" not in image.split("/")[-1] or image.endswith(":latest"):
                    fail(where, f"base image {image} has no pinned tag")
            cur = {"user": parent["user"] if parent else None,
                   "files": set(parent["files"]) if parent else set(),
                   "entrypoint": parent["entrypoint"] if parent else None, "line": line}
            stages[name] = cur
        elif word in ("COPY", "ADD") and cur is not None:
            toks = rest.split()
            flags = [t for t in toks if t.startswith("--")]
            paths = [t for t in toks if not t.startswith("--")]
            srcs, dest = paths[:-1], paths[-1]
            if any(f.startswith("--from=") for f in flags):
                for s in srcs:
                    cur["files"].add(dest.rstrip("/") if not dest.endswith("/") else dest + PurePosixPath(s).name)
                continue
            for s in srcs:
                p = ROOT / s
                if not p.exists():
                    fail(where, f"COPY source {s} does not exist in the repository")
                    continue
                r = str(PurePosixPath(s.strip("./").rstrip("/"))) if s not in (".", "./") else "."
                if r != "." and dockerignored(r, pats):
                    fail(where, f"COPY source {s} is excluded by .dockerignore")
                elif p.is_dir():
                    sent = [f for f in p.rglob("*") if f.is_file()
                            and not dockerignored(str(f.relative_to(ROOT)), pats)]
                    if not sent:
                        fail(where, f"COPY source {s}: .dockerignore excludes every file in it")
        elif word == "USER" and cur is not None:
            cur["user"] = rest.split(":")[0]
        elif word == "ENTRYPOINT" and cur is not None:
            try:
                cur["entrypoint"] = json.loads(rest)
            except json.JSONDecodeError:
                fail(where, "ENTRYPOINT not in exec (JSON) form: signals would go to a shell")
    for target, binary in (("hub", "mosaic-hub"), ("spoke", "mosaic-spoke")):
        st = stages.get(target)
        if st is None:
            fail(df, f"no stage named {target} (compose and the docs build --target {target})")
            continue
        if st["user"] in (None, "root", "0"):
            fail(df, f"target {target} runs as root")
        ep = st["entrypoint"] or []
        if binary not in ep:
            fail(df, f"target {target}'s ENTRYPOINT does not run {binary}")
        if f"/usr/local/bin/{binary}" not in st["files"]:
            fail(df, f"target {target} does not copy {binary} to /usr/local/bin")
    # Cargo needs every workspace member's manifest.
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = " ".join(r for _, w, r in ins if w == "COPY")
    for m in members:
        if f"{m}/Cargo.toml" not in copied and not re.search(rf"(^|\s){m}(\s|/\s)", copied):
            fail(df, f"the build stage does not copy workspace member {m} (cargo needs its manifest)")
    print(f"  {rel(df)}: stages {', '.join(k for k in stages if not k.startswith('#'))}")


# ---------------------------------------------------------------------------------------------
# compose.

def pki_outputs() -> dict[str, set[str]]:
    """Files pki-init.sh puts in the hub's ($h) and each spoke's ($d) volume."""
    text = (DEPLOY / "compose/pki-init.sh").read_text()
    out = {"hub": set(), "spoke": set()}
    for m in re.finditer(r'"\$(h|d)/([^"]+)"', text):
        out["hub" if m.group(1) == "h" else "spoke"].add(m.group(2))
    return out


def duration_s(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*", str(v)):
        return float(v)  # systemd: bare seconds
    total = 0.0
    for n, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", str(v)):
        total += float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


def cmd_compose() -> None:
    path = DEPLOY / "compose/compose.yaml"
    base = path.parent
    doc = yaml.safe_load(path.read_text())
    schemas = config_schemas()
    services = doc.get("services", {})
    named = set((doc.get("volumes") or {}).keys())
    outputs = pki_outputs()
    df_stages = {r.split()[-1] for _, w, r in dockerfile_instructions(DEPLOY / "docker/Dockerfile")
                 if w == "FROM" and len(r.split()) >= 3}
    procs = []
    for name, svc in services.items():
        where = f"{rel(path)}: services.{name}"
        for dep in (svc.get("depends_on") or {}):
            if dep not in services:
                fail(where, f"depends_on {dep}, which is not a service")
        b = svc.get("build")
        if isinstance(b, dict):
            ctx = (base / b.get("context", ".")).resolve()
            if not ctx.is_dir():
                fail(where, f"build context {b.get('context')} does not exist")
            dfile = ctx / b.get("dockerfile", "Dockerfile")
            if not dfile.is_file():
                fail(where, f"dockerfile {b.get('dockerfile')} does not exist in the context")
            if b.get("target") and b["target"] not in df_stages:
                fail(where, f"build target {b['target']} is not a stage of {rel(dfile)}")
        mounts = []
        for v in svc.get("volumes") or []:
            if isinstance(v, dict):
                src, dst, ro = v.get("source", ""), v.get("target", ""), v.get("read_only", False)
            else:
                parts = v.split(":")
                src, dst = parts[0], parts[1]
                ro = len(parts) > 2 and "ro" in parts[2].split(",")
            if src.startswith((".", "/")):
                host = (base / src).resolve()
                if not host.exists():
                    fail(where, f"bind mount source {src} does not exist")
                mounts.append((dst, ("bind", host, ro)))
            else:
                if src not in named:
                    fail(where, f"volume {src} is not declared under volumes:")
                mounts.append((dst, ("volume", src, ro)))
        for t in svc.get("tmpfs") or []:
            mounts.append((t, ("tmpfs", None, False)))
        svc["_mounts"] = mounts
    # The hub and spoke services and their configs.
    for name, svc in services.items():
        target = (svc.get("build") or {}).get("target")
        if target not in ("hub", "spoke") or svc.get("entrypoint"):
            continue
        where = f"{rel(path)}: services.{name}"
        env = svc.get("environment") or {}
        cmd = svc.get("command") or []
        if "--config" in cmd:
            cfg = cmd[cmd.index("--config") + 1]
        elif target == "hub":
            cfg = env.get("MOSAIC_HUB_CONFIG", "")
        else:
            cfg = "/etc/mosaic/spoke.toml"  # the image's CMD
        m = under(cfg, svc["_mounts"])
        if not m or m[1][0] != "bind":
            fail(where, f"its config {cfg} is not bind-mounted from deploy/compose")
            continue
        host = m[1][1] if m[0] == cfg else m[1][1] / cfg[len(m[0]) + 1:]
        checked = check_config_text(host, host.read_text(), schemas)
        if not checked:
            continue
        role, data = checked
        if role != target:
            fail(where, f"runs the {target} image with a {role} config ({rel(host)})")
            continue
        procs.append((name, role, data))
        svc["_config"] = (role, data, host)
        for key, p in config_paths(role, data):
            if not p.startswith("/"):
                fail(host, f"{key} = {p!r}: use an absolute path inside the container")
                continue
            mm = under(p, svc["_mounts"])
            if not mm:
                fail(host, f"{key} = {p}: no volume of service {name} holds it")
                continue
            kind, src, _ = mm[1]
            if kind == "volume":
                writers = [n for n, s in services.items() if s.get("entrypoint")
                           and any(i[0] == "volume" and i[1] == src for _, i in s["_mounts"])]
                fname = p[len(mm[0]) + 1:]
                made = {f.replace("$s", sid) for f in outputs[role]
                        for sid in [s.get("id") for s in data.get("spokes", [])] or [""]}
                if not writers:
                    fail(host, f"{key} = {p}: nothing writes volume {src}")
                elif fname not in made:
                    fail(host, f"{key} = {p}: pki-init.sh writes no {fname} for a {role} "
                               f"(it writes {', '.join(sorted(made))})")
            elif kind == "bind" and not (mm[1][1] / p[len(mm[0]) + 1:]).exists():
                fail(host, f"{key} = {p}: not in the bind-mounted {rel(mm[1][1])}")
        for key, p in workdirs(data):
            mm = under(p, svc["_mounts"])
            if svc.get("read_only") and (not mm or mm[1][2]):
                fail(host, f"{key} = {p}: not on a writable volume (the container is read-only)")
        ops = port_of(data.get("ops_listen", ""))
        hc = json.dumps((svc.get("healthcheck") or {}).get("test", ""))
        if ops is None:
            fail(host, "no ops_listen: the healthcheck and Prometheus have nothing to reach")
        elif f"/{ops}" not in hc:
            fail(where, f"the healthcheck does not probe the ops port {ops}")
        vhost = host_of(re.sub(r"^\w+://", "", data.get("valkey_url", "")))
        if vhost not in services or "valkey" not in str(services[vhost].get("image", "")):
            fail(host, f"valkey_url host {vhost} is not the Valkey service")
        if role == "spoke":
            need = stop_budget_s(data)
            have = duration_s(svc.get("stop_grace_period", "10s"))
            if have < need:
                fail(where, f"stop_grace_period {have:g}s is shorter than the spoke's drain and "
                            f"kill grace ({need:g}s): Docker would SIGKILL a draining spoke")
    # pki-init makes what the configs expect.
    init = next((s for s in services.values() if s.get("entrypoint")
                 and "pki-init" in json.dumps(s.get("entrypoint"))), None)
    if init is None:
        fail(path, "no pki-init service")
    else:
        env = init.get("environment") or {}
        spokes = set(str(env.get("MOSAIC_SPOKES", "")).split())
        ids = {d.get("spoke_id") for _, r, d in procs if r == "spoke"}
        if spokes != ids:
            fail(path, f"pki-init's MOSAIC_SPOKES {sorted(spokes)} differs from the spokes {sorted(ids)}")
        for name, svc in services.items():
            if "_config" not in svc:
                continue
            role, data, host = svc["_config"]
            ident = data.get("spoke_id") if role == "spoke" else data.get("hub_id")
            secret_vol = next((i[1] for d, i in svc["_mounts"] if i[0] == "volume"
                               and d == "/etc/mosaic/secrets"), None)
            init_vol = next((i[1] for d, i in init["_mounts"] if d == f"/out/{ident}"), None)
            if secret_vol is None or secret_vol != init_vol:
                fail(path, f"services.{name}: its /etc/mosaic/secrets volume ({secret_vol}) is not "
                           f"the one pki-init fills for {ident} (/out/{ident}: {init_vol})")
            if env.get("MOSAIC_TRUST_DOMAIN") != data.get("trust_domain"):
                fail(path, f"pki-init's MOSAIC_TRUST_DOMAIN is not {data.get('trust_domain')}")
            if role == "hub" and env.get("MOSAIC_HUB_ID") != data.get("hub_id"):
                fail(path, f"pki-init's MOSAIC_HUB_ID is not {data.get('hub_id')}")
    # The hub reaches each spoke by service name and listen port.
    by_id = {d.get("spoke_id"): (n, d) for n, r, d in procs if r == "spoke"}
    for n, r, d in procs:
        if r != "hub":
            continue
        for i, s in enumerate(d.get("spokes", [])):
            target = by_id.get(s.get("id"))
            if not target:
                continue
            if host_of(s.get("address")) != target[0]:
                fail(path, f"hub spokes[{i}].address {s.get('address')}: spoke {s.get('id')} is "
                           f"the service {target[0]}")
            if port_of(s.get("address")) != port_of(target[1].get("listen")):
                fail(path, f"hub spokes[{i}].address {s.get('address')}: spoke {s.get('id')} "
                           f"listens on {target[1].get('listen')}")
    check_federation(rel(path), procs)
    print(f"  {rel(path)}: services {', '.join(services)}")


# ---------------------------------------------------------------------------------------------
# Kubernetes (the rendered kustomize output).

# Objects the operator creates (deploy/README.md, "Kubernetes"), with the keys they hold.
OPERATOR_OBJECTS = {
    ("Secret", "hub-signing-key"): {"signing.pem"},
    ("Secret", "hub-tokens"): {"tokens.toml"},
    ("Secret", "spoke-a-receipt-key"): {"receipt.pem"},
    ("Secret", "spoke-b-receipt-key"): {"receipt.pem"},
    ("ConfigMap", "mosaic-public-keys"): {"hub.pub.pem", "spoke-a.pub.pem", "spoke-b.pub.pem"},
}
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# kubernetes-validate has the schemas of the first ones, certmanager.mjs of cert-manager's.
VALIDATED_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "cert-manager.io/v1"}


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cmd_k8s(rendered: Path) -> None:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    schemas = config_schemas()
    where0 = "deploy/k8s/base"
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    readme = (DEPLOY / "README.md").read_text() if (DEPLOY / "README.md").exists() else ""
    for kind, name in OPERATOR_OBJECTS:
        if name not in readme:
            fail("deploy/README.md", f"does not tell how to create the {kind} {name} the manifests use")
    certs = {d["spec"].get("secretName"): d for d in docs if d["kind"] == "Certificate"}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    pods = [(w, w["spec"]["template"]) for w in workloads]

    def source_keys(vol: dict) -> tuple[str, set[str] | None]:
        """What a volume holds: a description and its file names (None: unknown)."""
        if "configMap" in vol:
            n = vol["configMap"]["name"]
            if ("ConfigMap", n) in objs:
                keys = set((objs[("ConfigMap", n)].get("data") or {}).keys())
            elif ("ConfigMap", n) in OPERATOR_OBJECTS:
                keys = OPERATOR_OBJECTS[("ConfigMap", n)]
            else:
                return f"ConfigMap {n}", None
        elif "secret" in vol:
            n = vol["secret"]["secretName"]
            if n in certs:
                keys = CERT_MANAGER_KEYS
            elif ("Secret", n) in OPERATOR_OBJECTS:
                keys = OPERATOR_OBJECTS[("Secret", n)]
            else:
                return f"Secret {n}", None
        else:
            return "an emptyDir or volume claim", set()
        items = (vol.get("configMap") or vol.get("secret") or {}).get("items")
        if items:
            keys = {i["path"] for i in items if i["key"] in keys}
        return f"{'ConfigMap' if 'configMap' in vol else 'Secret'} {n}", keys

    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        where = f"{where0}: {kind} {name}"
        if d.get("apiVersion") not in VALIDATED_API_VERSIONS:
            fail(where, f"{d.get('apiVersion')} is checked by no schema in deploy/validate.sh; "
                        f"add one before using it")
        if kind != "Namespace" and not d["metadata"].get("namespace"):
            fail(where, "has no namespace")
        if kind == "Certificate":
            ref = d["spec"].get("issuerRef", {})
            if ref.get("kind", "Issuer") == "Issuer" and ("Issuer", ref.get("name")) not in objs:
                fail(where, f"issuerRef {ref.get('name')} is not an Issuer here")
            for u in d["spec"].get("uris") or []:
                if not re.fullmatch(r"spiffe://[^/:@ ]+/(hub|spoke|admin)/[A-Za-z0-9][A-Za-z0-9._-]{0,63}", u):
                    fail(where, f"URI SAN {u} is not spiffe://<trust-domain>/<hub|spoke|admin>/<id>")
            if len(d["spec"].get("uris") or []) > 1:
                fail(where, "more than one URI SAN: peers refuse such a certificate")
        if kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            sel = d["spec"].get("selector") if kind == "Service" else (
                d["spec"].get("selector", {}).get("matchLabels") if kind == "PodDisruptionBudget"
                else d["spec"].get("podSelector", {}).get("matchLabels"))
            if not any(matches(sel or {}, t["metadata"].get("labels", {})) for _, t in pods):
                fail(where, f"its selector {sel} matches no pod")
        if kind == "NetworkPolicy":
            for rule in d["spec"].get("ingress") or []:
                for frm in rule.get("from") or []:
                    ps = (frm.get("podSelector") or {}).get("matchLabels")
                    if ps and not any(matches(ps, t["metadata"].get("labels", {})) for _, t in pods):
                        fail(where, f"ingress from {ps} matches no pod")
    procs = []
    for w, tmpl in pods:
        where = f"{where0}: {w['kind']} {w['metadata']['name']}"
        spec = tmpl["spec"]
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers", []):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        fail(where, f"container {c['name']} has no {part}.{r}")
            for vm in c.get("volumeMounts") or []:
                if vm["name"] not in vols and vm["name"] not in {
                        t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates") or []}:
                    fail(where, f"container {c['name']} mounts {vm['name']}, which is no volume")
            for v in vols.values():
                desc, keys = source_keys(v)
                if keys is None:
                    fail(where, f"volume {v['name']}: {desc} is neither made here nor one the "
                                f"operator creates (deploy/README.md)")
            image = c.get("image", "").split(":")[0].split("/")[-1]
            if image not in ("mosaic-hub", "mosaic-spoke"):
                continue
            role = image.removeprefix("mosaic-")
            args = c.get("args") or []
            if "--config" not in args:
                fail(where, "no --config in the container's args")
                continue
            cfg = args[args.index("--config") + 1]
            mounts = [(vm["mountPath"], vm) for vm in c.get("volumeMounts") or []]
            for vm in c.get("volumeMounts") or []:
                if vm.get("subPath"):
                    fail(where, f"volume {vm['name']} is mounted with subPath: the process would "
                                f"never see a renewed certificate or changed file")
            m = under(cfg, mounts)
            vol = vols.get(m[1]["name"]) if m else None
            if not vol or "configMap" not in vol or ("ConfigMap", vol["configMap"]["name"]) not in objs:
                fail(where, f"its config {cfg} is not on a ConfigMap of this kustomization")
                continue
            cm = objs[("ConfigMap", vol["configMap"]["name"])]
            key = cfg[len(m[0]) + 1:]
            text = (cm.get("data") or {}).get(key)
            if text is None:
                fail(where, f"ConfigMap {cm['metadata']['name']} has no {key}")
                continue
            cfg_where = Path(f"{where0} ConfigMap {cm['metadata']['name']} {key}")
            checked = check_config_text(cfg_where, text, schemas)
            if not checked:
                continue
            crole, data = checked
            if crole != role:
                fail(where, f"the {image} image with a {crole} config")
                continue
            procs.append((w["metadata"]["name"], role, data))
            w["_config"] = (role, data)
            tls_secret = None
            for k, p in config_paths(role, data):
                mm = under(p, mounts)
                if not mm:
                    fail(where, f"{k} = {p}: no volume holds it")
                    continue
                v = vols.get(mm[1]["name"], {})
                desc, keys = source_keys(v)
                fname = p[len(mm[0]) + 1:]
                if keys is not None and fname not in keys:
                    fail(where, f"{k} = {p}: {desc} holds {sorted(keys)}, not {fname}")
                if k == "tls.cert":
                    tls_secret = (v.get("secret") or {}).get("secretName")
            cert = certs.get(tls_secret)
            if cert is None:
                fail(where, f"its tls.cert is not from a cert-manager Certificate (Secret {tls_secret})")
            elif (cert["spec"].get("uris") or []) != [spiffe(data, role)]:
                fail(where, f"Certificate {cert['metadata']['name']} names {cert['spec'].get('uris')}, "
                            f"but this {role} is {spiffe(data, role)} (it would refuse to start)")
            ro_root = (c.get("securityContext") or {}).get("readOnlyRootFilesystem")
            for k, p in workdirs(data):
                mm = under(p, mounts)
                if ro_root and (not mm or mm[1].get("readOnly")):
                    fail(where, f"{k} = {p}: not on a writable volume (read-only root file system)")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for k in ("listen", "http_listen", "ops_listen"):
                if k in data and port_of(data[k]) not in ports.values():
                    fail(where, f"{k} {data[k]}: no containerPort {port_of(data[k])}")
            ops = port_of(data.get("ops_listen", ""))
            rp = (c.get("readinessProbe") or {}).get("grpc", {})
            if ops is None:
                fail(where, "no ops_listen in its config: probes and metrics need it")
            else:
                if rp.get("port") != ops:
                    fail(where, f"readinessProbe is not grpc.health.v1 on the ops port {ops}")
                lp = (c.get("livenessProbe") or {}).get("httpGet") or {}
                lport = ports.get(lp.get("port"), lp.get("port"))
                if lp.get("path") != "/healthz" or lport != ops:
                    fail(where, f"livenessProbe is not GET /healthz on the ops port {ops} "
                                f"(readiness fails while Valkey is down; liveness must not)")
                ann = tmpl["metadata"].get("annotations") or {}
                if ann.get("prometheus.io/port") != str(ops):
                    fail(where, f"prometheus.io/port annotation is not the ops port {ops}")
            if w["spec"].get("replicas", 1) != 1:
                fail(where, "replicas must be 1: one process per hub or spoke id")
            vhost = host_of(re.sub(r"^\w+://", "", data.get("valkey_url", "")))
            svc = objs.get(("Service", vhost))
            if svc is None:
                fail(where, f"valkey_url host {vhost} is not a Service here")
            else:
                tgt = [t for _, t in pods if matches(svc["spec"].get("selector", {}), t["metadata"].get("labels", {}))]
                if not any("valkey" in ct.get("image", "") for t in tgt for ct in t["spec"]["containers"]):
                    fail(where, f"valkey_url: Service {vhost} selects no Valkey")
                if port_of(data.get("valkey_url", "")) not in [p["port"] for p in svc["spec"]["ports"]]:
                    fail(where, f"valkey_url port is not a port of Service {vhost}")
            if role == "spoke":
                need = stop_budget_s(data)
                have = spec.get("terminationGracePeriodSeconds", 30)
                if have < need:
                    fail(where, f"terminationGracePeriodSeconds {have} is shorter than the spoke's "
                                f"drain and kill grace ({need:g}s)")
    # The hub reaches each spoke through a Service that selects it, on its listen port.
    spokes = {w["_config"][1].get("spoke_id"): (w, t) for w, t in pods
              if "_config" in w and w["_config"][0] == "spoke"}
    for w, _ in pods:
        if "_config" not in w or w["_config"][0] != "hub":
            continue
        for i, s in enumerate(w["_config"][1].get("spokes", [])):
            target = spokes.get(s.get("id"))
            svc = objs.get(("Service", host_of(s.get("address"))))
            if target is None:
                continue
            if svc is None or not matches(svc["spec"].get("selector", {}),
                                          target[1]["metadata"].get("labels", {})):
                fail(where0, f"hub spokes[{i}].address {s.get('address')} is not a Service "
                             f"selecting spoke {s.get('id')}'s pod")
            elif port_of(s.get("address")) not in [p["port"] for p in svc["spec"]["ports"]]:
                fail(where0, f"hub spokes[{i}].address: Service {svc['metadata']['name']} has no "
                             f"port {port_of(s.get('address'))}")
            if port_of(s.get("address")) != port_of(target[0]["_config"][1].get("listen")):
                fail(where0, f"hub spokes[{i}].address port differs from spoke {s.get('id')}'s listen")
    check_federation(where0, procs)
    print(f"  {len(docs)} objects; hub and spokes: {', '.join(n for n, _, _ in procs)}")


# ---------------------------------------------------------------------------------------------
# systemd.

def unit(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("["):
            section = s.strip("[]")
            continue
        k, _, v = s.partition("=")
        out.setdefault(f"{section}.{k.strip()}", []).append(v.strip())
    return out


def cmd_systemd() -> None:
    default_spoke = {"profiles": {"p": {}}}  # drain 30 s, kill grace 10 s: the defaults
    for binary in ("mosaic-hub", "mosaic-spoke"):
        path = DEPLOY / f"systemd/{binary}.service"
        u = unit(path)
        get = lambda k: (u.get(f"Service.{k}") or [None])[-1]  # noqa: E731
        exe = (get("ExecStart") or "").split()
        if exe[:2] != [f"/usr/local/bin/{binary}", "serve"] or "--config" not in exe:
            fail(path, f"ExecStart must run /usr/local/bin/{binary} serve --config …")
        want = {
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "CapabilityBoundingSet": "", "KillMode": "mixed",
            "ExecReload": "/bin/kill -HUP $MAINPID",
        }
        for k, v in want.items():
            if get(k) != v:
                fail(path, f"{k}={v} is required (has {get(k)!r})")
        if set((get("RestrictAddressFamilies") or "").split()) != {"AF_INET", "AF_INET6", "AF_UNIX"}:
            fail(path, "RestrictAddressFamilies must be AF_INET AF_INET6 AF_UNIX")
        if "@system-service" not in " ".join(u.get("Service.SystemCallFilter", [])):
            fail(path, "SystemCallFilter=@system-service is required")
        if not get("ReadWritePaths"):
            fail(path, "no ReadWritePaths (ProtectSystem=strict makes everything else read-only)")
        if get("User") in (None, "root", "0"):
            fail(path, "runs as root")
        if binary == "mosaic-spoke":
            need = stop_budget_s(default_spoke)
            have = duration_s(get("TimeoutStopSec") or "90s")
            if have < need:
                fail(path, f"TimeoutStopSec {have:g}s is shorter than the default drain and kill "
                           f"grace ({need:g}s): systemd would SIGKILL a draining spoke")
        print(f"  {rel(path)}")


# ---------------------------------------------------------------------------------------------
# Grafana.

def cmd_grafana() -> None:
    path = DEPLOY / "grafana/mosaic.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(path, f"not valid JSON: {e}")
        return
    known: dict[str, tuple[str, set[str]]] = {}
    for line in (DEPLOY / "validate/metrics.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, typ, labels = line.split()
            known[name] = (typ, set() if labels == "-" else set(labels.split(",")))
    for k in ("title", "uid", "panels", "schemaVersion"):
        if k not in dash:
            fail(path, f"no {k}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    ids = set()
    used = set()
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    for p in panels:
        where = f"{rel(path)}: panel {p.get('id')} ({p.get('title')})"
        if p.get("id") in ids:
            fail(where, "duplicate panel id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            fail(where, "no gridPos")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and not var.startswith("__"):
                    fail(where, f"uses ${var}, which is not a dashboard variable")
            metrics = set()
            for m in re.finditer(r"\b(mosaic_[a-z0-9_]+)\b", expr):
                name = m.group(1)
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name in known:
                    metrics.add(name)
                elif base in known and known[base][0] == "histogram":
                    metrics.add(base)
                else:
                    fail(where, f"queries {name}, which is not a metric of hub or spoke "
                                f"(deploy/validate/metrics.txt)")
            used |= metrics
            labels = set().union(*[known[m][1] for m in metrics]) if metrics else set()
            labels |= {"instance", "job"}
            if "_bucket" in expr:
                labels.add("le")
            named = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr))
            named = {x.strip() for group in named for x in group.split(",") if x.strip()}
            named |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)", expr))
            for lab in named - labels:
                fail(where, f"uses label {lab}, which {', '.join(sorted(metrics)) or 'the metric'} "
                            f"does not have")
        ds = json.dumps(p.get("datasource", {}))
        if p.get("type") != "row" and "${datasource}" not in ds:
            fail(where, "datasource is not the ${datasource} variable")
    source = "\n".join(f.read_text() for d in ("hub", "spoke", "shared")
                       for f in (ROOT / d / "src").rglob("*.rs"))
    # prometheus-client registers counters without their `_total` suffix.
    missing = [m for m in sorted(known) if f'"{m}"' not in source
               and f'"{m.removesuffix("_total")}"' not in source]
    if missing:
        fail(rel(path), f"{len(missing)} of {len(known)} metrics in deploy/validate/metrics.txt "
                        f"are not registered in the Rust source: {', '.join(missing)}")
    unused = sorted(set(known) - used)
    print(f"  {rel(path)}: {len(panels)} panels, {len(used)} metrics"
          + (f" (not shown: {', '.join(unused)})" if unused else ""))


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    what = sys.argv[1]
    {
        "dockerfile": cmd_dockerfile,
        "config": cmd_config,
        "compose": cmd_compose,
        "systemd": cmd_systemd,
        "grafana": cmd_grafana,
        "k8s": lambda: cmd_k8s(Path(sys.argv[2])),
    }[what]()
    for n in NOTES:
        print(f"  note: {n}")
    for p in PROBLEMS:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
