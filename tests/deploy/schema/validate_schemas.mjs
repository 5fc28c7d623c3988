// Validates Kubernetes objects against the API schemas of a recent release
// (npm kubernetes-models, Kubernetes 1.32 schemas; Prometheus Operator CRDs from
// @kubernetes-models/prometheus-operator). Reads a JSON array of objects from
// the file named by argv[2]; prints one line per invalid object and exits 1,
// or exits 0. Used by tests/deploy/check_manifests.py.
//   node validate_schemas.mjs objects.json
import { readFileSync } from "node:fs";

function modulePath(apiVersion) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com") {
    return `@kubernetes-models/prometheus-operator/${group}/${version}`;
  }
  return group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`;
}

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let bad = 0;
for (const doc of docs) {
  const where = `${doc.kind}/${(doc.metadata || {}).name}`;
  let mod;
  try {
    mod = await import(modulePath(doc.apiVersion));
  } catch (e) {
    console.log(`${where}: no schema for apiVersion ${doc.apiVersion}`);
    bad++;
    continue;
  }
  const Kind = mod[doc.kind];
  if (typeof Kind !== "function") {
    console.log(`${where}: ${doc.apiVersion} has no kind ${doc.kind}`);
    bad++;
    continue;
  }
  try {
    new Kind(doc).validate();
  } catch (e) {
    const details = (e.errors || []).map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ");
    console.log(`${where}: ${details || e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
