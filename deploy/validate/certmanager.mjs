// Validates the cert-manager objects (Issuer, ClusterIssuer, Certificate) of a rendered
// manifest against cert-manager's API, offline, two ways, with @kubernetes-models/cert-manager
// (models generated from cert-manager's CRDs):
//
//  1. its validators (JSON Schema from the CRDs' openAPIV3Schema: types, enums, required
//     fields, formats);
//  2. the TypeScript compiler over its types, which also refuses unknown fields (a misspelt
//     `uri:` for `uris:`) as the API server's strict field validation would; the CRD schemas
//     alone allow them.
//
// Usage: node certmanager.mjs RENDERED.yaml   (run from the directory holding node_modules)
// Prints `FAIL <kind>/<name>: why` per problem and exits 1 if there was one.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate";
import { ClusterIssuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer";
import { Issuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer";

const MODELS = { Certificate, ClusterIssuer, Issuer };
const file = process.argv[2];
const docs = parseAllDocuments(readFileSync(file, "utf8"))
  .map((d) => d.toJS())
  .filter((d) => d && typeof d === "object");

let problems = 0;
const fail = (obj, msg) => {
  problems++;
  console.error(`FAIL ${obj.kind}/${obj.metadata?.name}: ${msg}`);
};

const checked = [];
for (const obj of docs) {
  if (!String(obj.apiVersion).endsWith("cert-manager.io/v1")) continue;
  const Model = MODELS[obj.kind];
  if (obj.apiVersion !== "cert-manager.io/v1" || !Model) {
    fail(obj, `${obj.apiVersion} ${obj.kind} is not checked here; add its model to certmanager.mjs`);
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    fail(obj, `does not match cert-manager's schema: ${e.message}`);
  }
  checked.push(obj);
}

// One declaration per line, so that a compiler error's line names its object.
const lines = [];
for (const kind of Object.keys(MODELS)) {
  lines.push(
    `import type { I${kind} } from "@kubernetes-models/cert-manager/cert-manager.io/v1/${kind}";`,
  );
}
const first = lines.length + 1;
checked.forEach((obj, i) => {
  lines.push(`export const r${i}: I${obj.kind} = ${JSON.stringify(obj)};`);
});
mkdirSync("check", { recursive: true });
const ts = join("check", "certmanager.ts");
writeFileSync(ts, lines.join("\n") + "\n");
try {
  execFileSync(
    join("node_modules", ".bin", "tsc"),
    ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution",
      "nodenext", "--target", "es2022", ts],
    { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
  );
} catch (e) {
  const out = `${e.stdout ?? ""}${e.stderr ?? ""}`;
  let matched = false;
  for (const m of out.matchAll(/\((\d+),\d+\): error (TS\d+: .*)/g)) {
    const obj = checked[Number(m[1]) - first];
    if (obj) {
      matched = true;
      fail(obj, m[2]);
    }
  }
  if (!matched) {
    problems++;
    console.error(`FAIL the TypeScript check did not run: ${out || e.message}`);
  }
}
for (const obj of checked) console.log(`  ${obj.kind}/${obj.metadata?.name}`);
process.exit(problems ? 1 : 0);
