#!/usr/bin/python3
"""Checks the Kubernetes manifests under deploy/ against the real binaries.

For every overlay in deploy/overlays/ it renders the overlay with
`kubectl kustomize`, parses every document and checks what a cluster would
only reveal at run time:

  * every document has apiVersion, kind and metadata.name, no duplicates, and
    namespaced objects carry the overlay's namespace;
  * every container runs a tunefleet binary and every `--flag=value` in its
    args is a flag that binary accepts (read from `<binary> --helpfull`);
    $(VAR) references resolve through env / envFrom / the rendered ConfigMaps;
  * the gRPC probes hit the --listen port, the Prometheus annotations name the
    --metrics_listen port, both ports are declared container ports;
  * terminationGracePeriodSeconds is above --drain_timeout;
  * --keys_file lies in a Secret volume that carries that file, --data_dir in a
    writable volume, TLS files in mounted volumes;
  * every Service / PodDisruptionBudget selector matches some pod template and
    every Service targetPort is a port of the pods it selects; StatefulSets
    name a headless Service; HPAs scale an object that exists;
  * every PVC / Secret / ConfigMap / ServiceAccount a pod refers to exists in
    the render (or is a Secret that deploy/README.md tells the operator to
    create: tunefleet-keys, tunefleet-internal-key, tunefleet-tls,
    tunefleet-internal-tls);
  * securityContext (non-root, read-only root, no privilege escalation, ALL
    capabilities dropped) and resource requests/limits are set; GPU requests
    equal GPU limits; the single-node overlay asks for no GPU, the gpu one does
    for trainer and serving, and the trainer's --gpus equals its GPU limit;
    trainers have a memory-backed /dev/shm;
  * gRPC probes hit the --listen or --health_listen port (the health port
    when TLS is on); --internal_key_file lies in a mounted Secret;
  * --artifacts_dir/--models_dir are on one PersistentVolumeClaim, ReadWriteMany
    outside single-node; tunefleet-trainer's worker binary
    (tunefleet-train-worker) sits next to it in the build and the images;
  * every pod is selected by a NetworkPolicy, every internal call
    (--scheduler_address, --dataset_address) names a Service port and is let
    through by the policies, no service with TLS on is dialled in plaintext
    and none requiring client certificates is dialled without one; in the gpu
    overlay (mTLS between the services) every such call carries the client TLS
    flags (--client_tls_ca_file/--client_tls_cert_file/--client_tls_key_file)
    and every callee requires client certificates (--tls_client_ca);
  * ServiceMonitors select Services with their port; PrometheusRule exprs and
    Grafana dashboards (ConfigMap *.json, valid JSON) query only tunefleet_*
    metrics the sources export (promtool check rules too, where installed).

--self-test additionally breaks a rendered overlay in one way at a time and
fails unless each mistake is reported, so the checker itself is checked.
--smoke-run starts every binary with each container's flag values (local
ports, scratch data dir and keys) and requires it to listen, then to exit 0
on SIGTERM, so values the binary rejects are caught too.

Exit status: 0 all good, 1 problems found, 77 skipped (kubectl with kustomize,
PyYAML or the binaries are not there; CTest maps 77 to SKIPPED).
"""

import argparse
import copy
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77

try:
    import yaml
except ImportError:  # Debian: python3-yaml (scripts/install-deps.d/k8s-tools)
    print("SKIP: PyYAML is not installed (apt-get install python3-yaml)")
    sys.exit(SKIP)

# Secrets the operator creates by hand (deploy/README.md), never rendered.
DOCUMENTED_SECRETS = {"tunefleet-keys", "tunefleet-internal-key", "tunefleet-tls",
                      "tunefleet-internal-tls"}
# Flags every service container must set explicitly.
REQUIRED_FLAGS = ("listen", "metrics_listen", "keys_file", "data_dir")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
GPU = "nvidia.com/gpu"
# Where docker/Dockerfile.cpu and docker/Dockerfile.cuda put the binaries.
IMAGE_BIN_DIR = "/usr/local/bin"
# The worker process tunefleet-trainer spawns (default: next to the agent).
TRAINER_WORKER = "tunefleet-train-worker"
# Flags naming another service's host:port -> the dialer's flags for the CA of
# that service's certificate (any one turns TLS on for the call). The client
# certificate of every call is --client_tls_cert_file/--client_tls_key_file
# (common/rpc/server_flags.cc).
DIAL_FLAGS = {
    "tunefleet-scheduler": {"dataset_address": ("client_tls_ca_file",)},
    "tunefleet-trainer": {"scheduler_address": ("client_tls_ca_file",),
                          "dataset_address": ("client_tls_ca_file",)},
    "tunefleet-serving": {"scheduler_address": ("scheduler_tls_ca_file", "client_tls_ca_file")},
}
CLIENT_TLS_FLAGS = ("client_tls_ca_file", "client_tls_cert_file", "client_tls_key_file")
# Overlays where every call between the services must be mTLS.
MTLS_OVERLAYS = ("gpu",)
# Flags naming directories on the volume shared by scheduler, trainers and serving.
SHARED_DIR_FLAGS = ("artifacts_dir", "models_dir")
# Overlays that run on one node, where a ReadWriteOnce volume can be shared.
SINGLE_NODE_OVERLAYS = ("single-node",)


# --------------------------------------------------------------------------- helpers

def parse_duration(text):
    """absl/Go duration ('30s', '1m30s', '500ms', '1h') -> seconds, or None."""
    text = text.strip()
    if text in ("0", "inf"):
        return 0.0 if text == "0" else float("inf")
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address):
    """'0.0.0.0:50051' or '[::]:50051' -> 50051, or None."""
    m = re.match(r"^(?:\[[^\]]*\]|[^:\[\]]*):(\d+)$", address or "")
    return int(m.group(1)) if m else None


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def path_under(path, mount):
    mount = mount.rstrip("/") or "/"
    return path == mount or path.startswith(mount + "/")


def exported_metrics(source_dir):
    """Names of the Prometheus metrics the services export, read from the
    sources: literal "tunefleet_..." names, and the per-service RPC metrics
    common/rpc/metrics.cc builds as StrCat("tunefleet_", service, "_rpc_...")."""
    names = set()
    files = glob.glob(os.path.join(source_dir, "services", "**", "*.cc"), recursive=True) + \
        glob.glob(os.path.join(source_dir, "services", "**", "*.h"), recursive=True) + \
        glob.glob(os.path.join(source_dir, "common", "rpc", "*.cc"))
    for path in files:
        with open(path, errors="replace") as f:
            text = f.read()
        names.update(re.findall(r'"(tunefleet_[a-z0-9_]+)"', text))
        for suffix in re.findall(r'StrCat\("tunefleet_", service, "(_[a-z0-9_]+)"\)', text):
            for svc in ("dataset", "scheduler", "trainer", "serving"):
                names.add("tunefleet_" + svc + suffix)
    return names


def metrics_in(expr):
    return set(re.findall(r"\b(tunefleet_[a-z0-9_]+)", expr or ""))


def unknown_metrics(expr, known):
    out = []
    for name in sorted(metrics_in(expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known:
            out.append(name)
    return out


class Flags:
    """The flags of each binary, read once from `<binary> --helpfull`."""

    HELP_RE = re.compile(r"^\s+--([A-Za-z0-9_]+) \((.*?)\);\s+default: (.*?);$",
                         re.MULTILINE | re.DOTALL)

    def __init__(self, bin_dir):
        self.bin_dir = os.path.abspath(bin_dir)
        self.cache = {}

    def path(self, binary):
        return os.path.join(self.bin_dir, binary)

    def get(self, binary):
        """{flag: default-string} for binary, or raises RuntimeError."""
        if binary not in self.cache:
            exe = self.path(binary)
            proc = subprocess.run([exe, "--helpfull"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
            flags = {}
            for m in self.HELP_RE.finditer(proc.stdout):
                default = m.group(3).strip()
                if default.startswith('"') and default.endswith('"'):
                    default = default[1:-1]
                flags[m.group(1)] = default
            if "listen" not in flags or "keys_file" not in flags:
                raise RuntimeError("could not read the flags of %s from its --helpfull output:\n%s"
                                   % (exe, proc.stdout[:2000]))
            self.cache[binary] = flags
        return self.cache[binary]


# --------------------------------------------------------------------------- checker

class Checker:
    def __init__(self, overlay, docs, flags, metrics=None):
        self.metrics = metrics or set()
        self.overlay = overlay
        self.docs = docs
        self.flags = flags
        self.errors = []
        self.runs = []  # (where, binary, {flag: value}) for --smoke-run

    def err(self, where, message):
        self.errors.append("%s: %s: %s" % (self.overlay, where, message))

    # -- index of the render
    def index(self):
        self.by_kind = {}
        seen = set()
        for i, d in enumerate(self.docs):
            if not isinstance(d, dict):
                self.err("document %d" % i, "is not a mapping")
                continue
            missing = [f for f in ("apiVersion", "kind") if not d.get(f)]
            name = (d.get("metadata") or {}).get("name")
            if not name:
                missing.append("metadata.name")
            if missing:
                self.err("document %d (%s)" % (i, d.get("kind", "?")), "missing " + ", ".join(missing))
                continue
            ns = d["metadata"].get("namespace", "")
            key = (d["kind"], ns, name)
            if key in seen:
                self.err("%s/%s" % (d["kind"], name), "defined twice")
            seen.add(key)
            self.by_kind.setdefault(d["kind"], {})[name] = d
        self.namespaces = {(d.get("metadata") or {}).get("namespace") for d in self.docs
                           if isinstance(d, dict) and d.get("kind") not in CLUSTER_SCOPED}
        if len(self.namespaces) != 1 or None in self.namespaces:
            self.err("namespace", "overlay objects should all have one namespace, found %s"
                     % sorted(str(n) for n in self.namespaces))

    def names(self, kind):
        return self.by_kind.get(kind, {})

    def pod_templates(self):
        """[(where, workload doc, pod template)]"""
        out = []
        for kind in sorted(WORKLOADS):
            for name, d in sorted(self.names(kind).items()):
                out.append(("%s/%s" % (kind, name), d, (d.get("spec") or {}).get("template") or {}))
        for name, d in sorted(self.names("Pod").items()):
            out.append(("Pod/%s" % name, d, d))
        return out

    # -- checks
    def run(self):
        self.index()
        self.shared_claims = {}  # claim -> [where]
        self.trainer_gpus = []   # (where, --gpus, container, [(mount, volume)])
        self.serving_devices = []  # (where, --device, container)
        # (where, binary, flag, host:port, dials with TLS, presents a client cert, caller labels)
        self.calls = []
        self.servers = []        # (labels, --listen port, TLS on, client certificate required)
        self.current_labels = {}
        templates = self.pod_templates()
        if not templates:
            self.err("render", "no workloads at all")
        for where, doc, tmpl in templates:
            self.check_workload(where, doc, tmpl)
        self.check_services(templates)
        self.check_selectors(templates)
        self.check_overlay_gpu(templates)
        self.check_shared_volume()
        self.check_network_policies(templates)
        self.check_calls(templates)
        self.check_observability()
        return self.errors

    def check_observability(self):
        for name, sm in sorted(self.names("ServiceMonitor").items()):
            spec = sm.get("spec") or {}
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            for ep in spec.get("endpoints") or []:
                if not any(labels_match(sel, (svc.get("metadata") or {}).get("labels") or {}) and
                           ep.get("port") in [p.get("name") for p in (svc.get("spec") or {}).get("ports") or []]
                           for svc in self.names("Service").values()):
                    self.err("ServiceMonitor/%s" % name, "endpoint port %r is a port of no Service it selects"
                             % ep.get("port"))
        for name, rule in sorted(self.names("PrometheusRule").items()):
            where = "PrometheusRule/%s" % name
            groups = (rule.get("spec") or {}).get("groups") or []
            if not groups:
                self.err(where, "no rule groups")
            for g in groups:
                for r in g.get("rules") or []:
                    what = "%s rule %s" % (where, r.get("alert") or r.get("record"))
                    if not (r.get("alert") or r.get("record")) or not r.get("expr"):
                        self.err(what, "needs alert (or record) and expr")
                    if "for" in r and parse_duration(str(r["for"])) is None:
                        self.err(what, "for: %r is not a duration" % r["for"])
                    for m in unknown_metrics(str(r.get("expr")), self.metrics):
                        self.err(what, "queries %s, which no service exports" % m)
            self.check_promtool(where, rule)
        for name, cm in sorted(self.names("ConfigMap").items()):
            for key, text in sorted(((cm.get("data") or {})).items()):
                if not key.endswith(".json"):
                    continue
                where = "ConfigMap/%s %s" % (name, key)
                try:
                    dash = json.loads(text)
                except ValueError as e:
                    self.err(where, "is not valid JSON: %s" % e)
                    continue
                exprs = []

                def walk(o):
                    if isinstance(o, dict):
                        for k, v in o.items():
                            if k in ("expr", "query", "definition") and isinstance(v, str):
                                exprs.append(v)
                            else:
                                walk(v)
                    elif isinstance(o, list):
                        for v in o:
                            walk(v)
                walk(dash)
                if not dash.get("panels") or not exprs:
                    self.err(where, "is not a Grafana dashboard with queries")
                for e in exprs:
                    for m in unknown_metrics(e, self.metrics):
                        self.err(where, "queries %s, which no service exports" % m)

    def check_promtool(self, where, rule):
        promtool = shutil.which("promtool")
        if promtool is None:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".rules.yml") as f:
            yaml.safe_dump(rule.get("spec") or {}, f)
            f.flush()
            proc = subprocess.run([promtool, "check", "rules", f.name], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        if proc.returncode != 0:
            self.err(where, "promtool check rules: %s" % proc.stdout.strip())

    def check_shared_volume(self):
        if len(self.shared_claims) > 1:
            self.err("shared volume", "--artifacts_dir/--models_dir must be on one volume shared by "
                     "every service; found claims %s" % sorted(self.shared_claims))
        for claim, users in sorted(self.shared_claims.items()):
            pvc = self.names("PersistentVolumeClaim").get(claim)
            if pvc is None:
                continue  # reported by check_volume
            modes = (pvc.get("spec") or {}).get("accessModes") or []
            if "ReadWriteMany" not in modes and self.overlay not in SINGLE_NODE_OVERLAYS:
                self.err("PersistentVolumeClaim/%s" % claim,
                         "holds --artifacts_dir/--models_dir for pods on many nodes (%s) but its "
                         "accessModes %s lack ReadWriteMany" % (", ".join(sorted(set(users))), modes))

    def policies_for(self, labels):
        out = []
        for name, np in sorted(self.names("NetworkPolicy").items()):
            spec = np.get("spec") or {}
            sel = spec.get("podSelector") or {}
            if sel.get("matchExpressions"):
                continue  # not evaluated here; keep selectors to matchLabels
            ml = sel.get("matchLabels") or {}
            if not all(labels.get(k) == v for k, v in ml.items()):
                continue
            types = spec.get("policyTypes") or (["Ingress"] if "egress" not in spec else [])
            if "Ingress" in types:
                out.append((name, spec))
        return out

    def check_network_policies(self, templates):
        if not self.names("NetworkPolicy"):
            self.err("NetworkPolicy", "none in the render: every pod must be isolated")
            return
        for where, _, t in templates:
            labels = (t.get("metadata") or {}).get("labels") or {}
            if not self.policies_for(labels):
                self.err(where, "no NetworkPolicy with Ingress selects its pods: they accept any traffic")

    def check_calls(self, templates):
        """Every internal call (--scheduler_address, --dataset_address) names a
        Service port of the render, the NetworkPolicies let the caller through,
        and a callee serving TLS is dialled with TLS."""
        mtls_overlay = os.path.basename(self.overlay.rstrip("/")) in MTLS_OVERLAYS
        for where, binary, flag, address, dials_tls, has_cert, caller in self.calls:
            if mtls_overlay and not (dials_tls and has_cert):
                self.err(where, "--%s=%s: the %s overlay runs mTLS between the services, but %s "
                         "dials it without client TLS flags (--%s)"
                         % (flag, address, self.overlay, binary, ", --".join(CLIENT_TLS_FLAGS)))
            if address is None:
                continue  # only known at run time
            m = re.match(r"^([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)$", address)
            if not m:
                self.err(where, "--%s=%s is not a <service>[.<namespace>.svc]:<port>" % (flag, address))
                continue
            host, port = m.group(1), int(m.group(2))
            svc = self.names("Service").get(host)
            if svc is None:
                self.err(where, "--%s=%s: no Service %r in the render" % (flag, address, host))
                continue
            sport = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
            if not sport:
                self.err(where, "--%s=%s: Service %s has no port %d" % (flag, address, host, port))
                continue
            target = sport[0].get("targetPort", port)
            sel = (svc.get("spec") or {}).get("selector") or {}
            for twhere, _, t in templates:
                labels = (t.get("metadata") or {}).get("labels") or {}
                if not labels_match(sel, labels):
                    continue
                cports = [p for c in (t.get("spec") or {}).get("containers") or []
                          for p in c.get("ports") or [] if target in (p.get("name"), p.get("containerPort"))]
                names = {x for p in cports for x in (p.get("name"), p.get("containerPort")) if x is not None}
                for slabels, sport_num, tls_on, mtls_on in self.servers:
                    if slabels is not labels or sport_num not in names:
                        continue
                    if tls_on and not dials_tls:
                        self.err(where, "--%s=%s: %s serves TLS but %s dials it in plaintext "
                                 "(it has no TLS flag for this call)" % (flag, address, twhere, binary))
                    elif mtls_on and not has_cert:
                        self.err(where, "--%s=%s: %s requires a client certificate (mTLS) but %s "
                                 "presents none (--client_tls_cert_file)" % (flag, address, twhere, binary))
                    if mtls_overlay and not mtls_on:
                        self.err(where, "--%s=%s: the %s overlay runs mTLS between the services, but "
                                 "%s does not require client certificates (--tls_client_ca)"
                                 % (flag, address, self.overlay, twhere))
                policies = self.policies_for(labels)
                if policies and not any(self.rule_allows(rule, caller, names)
                                        for _, spec in policies for rule in spec.get("ingress") or []):
                    self.err(where, "--%s=%s: no NetworkPolicy lets it reach %s port %s (policies "
                             "selecting those pods: %s)" % (flag, address, twhere, target,
                                                            ", ".join(n for n, _ in policies)))

    @staticmethod
    def rule_allows(rule, caller, port_names):
        ports = rule.get("ports")
        if ports and not any(p.get("port") in port_names or p.get("port") is None for p in ports):
            return False
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            ns = peer.get("namespaceSelector")
            if ns is not None and ns != {} and (ns.get("matchLabels") or ns.get("matchExpressions")):
                continue  # another namespace; the callers live in the overlay's
            ps = peer.get("podSelector")
            if ps is None or all(caller.get(k) == v for k, v in (ps.get("matchLabels") or {}).items()):
                if not (ps or {}).get("matchExpressions"):
                    return True
        return False

    def check_workload(self, where, doc, tmpl):
        kind = doc["kind"]
        spec = doc.get("spec") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        pod = tmpl.get("spec") or {}
        if kind != "Pod":
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not labels_match(sel, labels):
                self.err(where, "selector %s does not match the pod template labels %s" % (sel, labels))
        if kind == "StatefulSet":
            svc = self.names("Service").get(spec.get("serviceName"))
            if svc is None:
                self.err(where, "serviceName %r is not a Service in the render" % spec.get("serviceName"))
            elif (svc.get("spec") or {}).get("clusterIP") != "None":
                self.err(where, "serviceName %r is not a headless Service" % spec.get("serviceName"))

        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and sa not in self.names("ServiceAccount"):
            self.err(where, "serviceAccountName %r is not in the render" % sa)

        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        claims = {((c.get("metadata") or {}).get("name")): c
                  for c in spec.get("volumeClaimTemplates") or []} if kind == "StatefulSet" else {}
        for vname, v in volumes.items():
            self.check_volume(where, vname, v)
        pod_sc = pod.get("securityContext") or {}
        grace = pod.get("terminationGracePeriodSeconds", 30)
        annotations = (tmpl.get("metadata") or {}).get("annotations") or {}

        containers = pod.get("containers") or []
        if not containers:
            self.err(where, "no containers")
        self.current_labels = labels
        for c in containers:
            self.check_container("%s container %s" % (where, c.get("name")), c, volumes, claims,
                                 pod_sc, grace, annotations)

    def check_volume(self, where, vname, v):
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"].get("claimName")
            if claim not in self.names("PersistentVolumeClaim"):
                self.err(where, "volume %s: PersistentVolumeClaim %r is not in the render" % (vname, claim))
        if "secret" in v:
            self.check_secret(where, "volume %s" % vname, v["secret"].get("secretName"),
                              v["secret"].get("optional"))
        if "configMap" in v:
            self.check_config_map(where, "volume %s" % vname, v["configMap"].get("name"), None,
                                  v["configMap"].get("optional"))

    def check_secret(self, where, what, name, optional=False):
        if name in self.names("Secret") or name in DOCUMENTED_SECRETS or optional:
            return
        self.err(where, "%s: Secret %r is neither in the render nor a documented Secret (%s)"
                 % (what, name, ", ".join(sorted(DOCUMENTED_SECRETS))))

    def check_config_map(self, where, what, name, key=None, optional=False):
        cm = self.names("ConfigMap").get(name)
        if cm is None:
            if not optional:
                self.err(where, "%s: ConfigMap %r is not in the render" % (what, name))
            return None
        if key is not None and key not in (cm.get("data") or {}) and not optional:
            self.err(where, "%s: ConfigMap %r has no key %r" % (what, name, key))
        return cm

    def environment(self, where, c):
        """Variables visible to $(VAR) expansion: name -> value (None when only
        known at run time, e.g. a fieldRef)."""
        env = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                cm = self.check_config_map(where, "envFrom", ref.get("name"), None, ref.get("optional"))
                for k, val in ((cm or {}).get("data") or {}).items():
                    env[prefix + k] = str(val)
            if "secretRef" in src:
                ref = src["secretRef"]
                self.check_secret(where, "envFrom", ref.get("name"), ref.get("optional"))
                sec = self.names("Secret").get(ref.get("name")) or {}
                for k in (sec.get("data") or {}):
                    env[prefix + k] = None
        for e in c.get("env") or []:
            name = e.get("name")
            if "value" in e:
                env[name] = str(e["value"])
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                env[name] = None
                if "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    cm = self.check_config_map(where, "env %s" % name, ref.get("name"), ref.get("key"),
                                               ref.get("optional"))
                    if cm is not None:
                        val = (cm.get("data") or {}).get(ref.get("key"))
                        env[name] = None if val is None else str(val)
                if "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    self.check_secret(where, "env %s" % name, ref.get("name"), ref.get("optional"))
            else:
                env[name] = ""
        return env

    def expand(self, where, value, env):
        """Kubernetes $(VAR) expansion; None if a part is only known at run time."""
        unknown = []

        def sub(m):
            name = m.group(1)
            if name not in env:
                self.err(where, "args use $(%s), which is not in the container's environment" % name)
                return m.group(0)
            if env[name] is None:
                unknown.append(name)
                return ""
            return env[name]

        out = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)
        return None if unknown else out

    def check_container(self, where, c, volumes, claims, pod_sc, grace, annotations):
        command = c.get("command") or []
        if not c.get("image"):
            self.err(where, "no image")
        if not command:
            self.err(where, "no command: name the tunefleet binary explicitly")
            return
        binary = os.path.basename(command[0])
        if not re.match(r"^tunefleet-[a-z]+$", binary):
            self.err(where, "command %r is not a tunefleet service binary" % command[0])
            return
        if os.path.dirname(command[0]) != IMAGE_BIN_DIR:
            self.err(where, "command %r: the images (docker/Dockerfile.*) install binaries in %s"
                     % (command[0], IMAGE_BIN_DIR))
        if not os.path.exists(self.flags.path(binary)):
            self.err(where, "command %r: no binary %s in the build" % (command[0], self.flags.path(binary)))
            return
        known = self.flags.get(binary)
        env = self.environment(where, c)

        # --flag=value args, each known to the binary
        values = {}
        for arg in list(command[1:]) + list(c.get("args") or []):
            m = re.match(r"^--([A-Za-z0-9_]+)=(.*)$", str(arg))
            if not m:
                self.err(where, "argument %r is not of the form --flag=value" % arg)
                continue
            name, value = m.group(1), m.group(2)
            if name not in known:
                self.err(where, "%s does not accept the flag --%s (known: %s)"
                         % (binary, name, ", ".join(sorted(known))))
                continue
            if name in values:
                self.err(where, "flag --%s given twice" % name)
            values[name] = self.expand(where, value, env)
        self.runs.append((where, binary, values))
        for name in REQUIRED_FLAGS:
            if name not in values:
                self.err(where, "must set --%s explicitly" % name)

        # ports
        ports = {}
        for p in c.get("ports") or []:
            ports[p.get("containerPort")] = p
            if p.get("name"):
                ports[p["name"]] = p

        def resolve(port):
            p = ports.get(port)
            return p.get("containerPort") if p else (port if isinstance(port, int) else None)

        grpc_port = port_of(values.get("listen"))
        health_port = port_of(values.get("health_listen")) if values.get("health_listen") else None
        if values.get("health_listen") and health_port is None:
            self.err(where, "--health_listen=%r has no port" % values.get("health_listen"))
        if health_port is not None and health_port not in ports:
            self.err(where, "the --health_listen port %d is not a declared containerPort" % health_port)
        tls_on = bool(values.get("tls_cert"))
        if "listen" in values and grpc_port is None:
            self.err(where, "--listen=%r has no port" % values.get("listen"))
        if grpc_port is not None and grpc_port not in ports:
            self.err(where, "the --listen port %d is not a declared containerPort" % grpc_port)
        metrics = values.get("metrics_listen")
        metrics_port = None if metrics == "off" else port_of(metrics)
        if metrics not in (None, "off") and metrics_port is None:
            self.err(where, "--metrics_listen=%r has no port" % metrics)
        if metrics_port is not None and metrics_port not in ports:
            self.err(where, "the --metrics_listen port %d is not a declared containerPort" % metrics_port)

        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_name)
            if probe is None:
                if probe_name != "startupProbe":
                    self.err(where, "no %s" % probe_name)
                continue
            if "grpc" in probe:
                port = probe["grpc"].get("port")
                if tls_on and port != health_port:
                    self.err(where, "%s checks gRPC port %r but TLS is on: the kubelet's gRPC probe "
                             "speaks plaintext, use the --health_listen port %s"
                             % (probe_name, port, health_port))
                elif grpc_port is not None and port not in (grpc_port, health_port):
                    self.err(where, "%s checks gRPC port %r but the service listens on %s"
                             % (probe_name, port, grpc_port) +
                             (" (health on %s)" % health_port if health_port else ""))
            elif "httpGet" in probe or "tcpSocket" in probe:
                port = (probe.get("httpGet") or probe.get("tcpSocket")).get("port")
                if resolve(port) not in (grpc_port, metrics_port, health_port) or resolve(port) is None:
                    self.err(where, "%s targets port %r, which the service does not listen on"
                             % (probe_name, port))
            elif "exec" not in probe:
                self.err(where, "%s has no handler" % probe_name)

        scrape = str(annotations.get("prometheus.io/scrape", "")).lower() == "true"
        if metrics_port is not None and not scrape:
            self.err(where, "metrics are on port %d but the pod has no prometheus.io/scrape annotation"
                     % metrics_port)
        if scrape:
            ann_port = str(annotations.get("prometheus.io/port", ""))
            if metrics_port is None or ann_port != str(metrics_port):
                self.err(where, "prometheus.io/port is %r but --metrics_listen port is %s"
                         % (ann_port, metrics_port))

        self.servers.append((self.current_labels, grpc_port, bool(values.get("tls_cert")),
                             bool(values.get("tls_cert") and values.get("tls_client_ca"))))

        # graceful shutdown
        drain_text = values.get("drain_timeout", known.get("drain_timeout"))
        if "drain_timeout" in values and drain_text is None:
            self.err(where, "--drain_timeout must be known before run time")
        elif drain_text is not None:
            drain = parse_duration(drain_text)
            if drain is None:
                self.err(where, "--drain_timeout=%r is not a duration" % drain_text)
            elif not grace > drain:
                self.err(where, "terminationGracePeriodSeconds %s is not above --drain_timeout %s"
                         % (grace, drain_text))

        # mounts
        mounts = c.get("volumeMounts") or []
        for m in mounts:
            if m.get("name") not in volumes and m.get("name") not in claims:
                self.err(where, "volumeMount %r names no volume or volumeClaimTemplate" % m.get("name"))

        def mount_for(path):
            best = None
            for m in mounts:
                if path_under(path, m.get("mountPath", "")) and (
                        best is None or len(m["mountPath"]) > len(best["mountPath"])):
                    best = m
            return best

        def check_file_in_secret(flag):
            path = values.get(flag)
            if not path:
                return
            m = mount_for(path)
            vol = volumes.get((m or {}).get("name")) or {}
            if m is None or "secret" not in vol:
                self.err(where, "--%s=%s is not in a mounted Secret volume" % (flag, path))
                return
            items = vol["secret"].get("items")
            rel = m["subPath"] if m.get("subPath") else path[len(m["mountPath"].rstrip("/")) + 1:]
            if items is not None and rel not in [i.get("path") for i in items]:
                self.err(where, "--%s=%s: Secret volume %s does not project %r"
                         % (flag, path, m["name"], rel))

        for flag in ("keys_file", "internal_key_file", "tls_cert", "tls_key", "tls_client_ca",
                     "scheduler_tls_ca_file") + CLIENT_TLS_FLAGS:
            check_file_in_secret(flag)
        if binary in ("tunefleet-trainer", "tunefleet-serving") and not values.get("internal_key_file"):
            self.err(where, "%s calls the scheduler and must set --internal_key_file" % binary)

        # the shared volume: base models and artifacts, by path, in every pod
        for flag in SHARED_DIR_FLAGS:
            path = values.get(flag)
            if not path:
                if flag in known and binary != "tunefleet-dataset":
                    self.err(where, "must set --%s on the shared volume" % flag)
                continue
            m = mount_for(path)
            vol = volumes.get((m or {}).get("name")) or {}
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is None:
                self.err(where, "--%s=%s is not on a PersistentVolumeClaim mount (the shared volume)"
                         % (flag, path))
                continue
            self.shared_claims.setdefault(claim, []).append(where)
            if binary == "tunefleet-trainer" and flag == "artifacts_dir" and m.get("readOnly"):
                self.err(where, "--artifacts_dir=%s is on a read-only mount: workers write "
                         "checkpoints there" % path)

        if binary == "tunefleet-serving":
            self.serving_devices.append((where, values.get("device", known.get("device")), c))
        # the trainer agent runs its worker from next to itself
        if binary == "tunefleet-trainer":
            worker = values.get("worker_binary") or os.path.join(IMAGE_BIN_DIR, TRAINER_WORKER)
            if os.path.dirname(worker) != IMAGE_BIN_DIR or os.path.basename(worker) != TRAINER_WORKER:
                self.err(where, "--worker_binary=%s: the images install %s in %s"
                         % (worker, TRAINER_WORKER, IMAGE_BIN_DIR))
            elif not os.access(self.flags.path(TRAINER_WORKER), os.X_OK):
                self.err(where, "tunefleet-trainer runs %s, which is not in the build (%s)"
                         % (worker, self.flags.path(TRAINER_WORKER)))
            self.trainer_gpus.append((where, values.get("gpus", known.get("gpus")), c,
                                      [(m, volumes.get(m.get("name")) or {}) for m in mounts]))

        # internal calls, for the NetworkPolicy and TLS checks
        for flag, ca_flags in DIAL_FLAGS.get(binary, {}).items():
            if flag not in values:
                continue
            self.calls.append((where, binary, flag, values[flag],
                               any(values.get(f) for f in ca_flags),
                               bool(values.get("client_tls_cert_file")), self.current_labels))
        data_dir = values.get("data_dir")
        if data_dir:
            m = mount_for(data_dir)
            if m is None:
                self.err(where, "--data_dir=%s is on the read-only root filesystem" % data_dir)
            elif m.get("readOnly"):
                self.err(where, "--data_dir=%s is on a read-only mount" % data_dir)
        if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
            self.err(where, "--tls_cert and --tls_key go together")
        if values.get("tls_client_ca") and not values.get("tls_cert"):
            self.err(where, "--tls_client_ca (mTLS) needs --tls_cert and --tls_key")
        if bool(values.get("client_tls_cert_file")) != bool(values.get("client_tls_key_file")):
            self.err(where, "--client_tls_cert_file and --client_tls_key_file go together")
        if values.get("client_tls_cert_file") and not values.get("client_tls_ca_file"):
            self.err(where, "--client_tls_cert_file needs --client_tls_ca_file (the services' CA)")

        # security
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
            self.err(where, "runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.err(where, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.err(where, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            self.err(where, "capabilities do not drop ALL")

        # resources
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for r in ("cpu", "memory"):
            if r not in req:
                self.err(where, "no %s request" % r)
            if r not in lim:
                self.err(where, "no %s limit" % r)
        for r in set(req) | set(lim):
            if "/" in r and r.split("/")[0] not in ("kubernetes.io",) and req.get(r) != lim.get(r):
                self.err(where, "extended resource %s: requests (%s) must equal limits (%s)"
                         % (r, req.get(r), lim.get(r)))

    def check_services(self, templates):
        for name, svc in sorted(self.names("Service").items()):
            where = "Service/%s" % name
            spec = svc.get("spec") or {}
            sel = spec.get("selector") or {}
            if not sel:
                self.err(where, "has no selector")
                continue
            pods = [t for _, _, t in templates
                    if labels_match(sel, (t.get("metadata") or {}).get("labels") or {})]
            if not pods:
                self.err(where, "selector %s matches no pod template" % sel)
                continue
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for t in pods:
                    cports = [p for c in (t.get("spec") or {}).get("containers") or []
                              for p in c.get("ports") or []]
                    if not any(target in (p.get("name"), p.get("containerPort")) for p in cports):
                        self.err(where, "port %s: targetPort %r is not a port of the selected pods"
                                 % (port.get("name", port.get("port")), target))

    def check_selectors(self, templates):
        all_labels = [(t.get("metadata") or {}).get("labels") or {} for _, _, t in templates]
        for name, pdb in sorted(self.names("PodDisruptionBudget").items()):
            sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not any(labels_match(sel, l) for l in all_labels):
                self.err("PodDisruptionBudget/%s" % name, "selector %s matches no pod template" % sel)
        for name, hpa in sorted(self.names("HorizontalPodAutoscaler").items()):
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("name") not in self.names(ref.get("kind")):
                self.err("HorizontalPodAutoscaler/%s" % name,
                         "scales %s/%s, which is not in the render" % (ref.get("kind"), ref.get("name")))

    def check_overlay_gpu(self, templates):
        base = os.path.basename(self.overlay.rstrip("/"))
        for where, _, t in templates:
            for c in (t.get("spec") or {}).get("containers") or []:
                res = c.get("resources") or {}
                asks = GPU in (res.get("limits") or {}) or GPU in (res.get("requests") or {})
                binary = os.path.basename((c.get("command") or [""])[0])
                if base in SINGLE_NODE_OVERLAYS and asks:
                    self.err(where, "the %s overlay must not request %s" % (base, GPU))
                if base == "gpu" and binary in ("tunefleet-trainer", "tunefleet-serving") and not asks:
                    self.err(where, "the gpu overlay's %s must request %s" % (binary, GPU))
        for where, device, c in self.serving_devices:
            res = c.get("resources") or {}
            asks = GPU in (res.get("limits") or {}) or GPU in (res.get("requests") or {})
            on_gpu = str(device or "cpu").startswith("cuda")
            if asks and not on_gpu:
                self.err(where, "tunefleet-serving requests %s but runs --device=%s: the GPU would "
                         "sit idle" % (GPU, device))
            elif on_gpu and not asks:
                self.err(where, "tunefleet-serving runs --device=%s without requesting %s"
                         % (device, GPU))
        for where, gpus, c, mounts in self.trainer_gpus:
            limit = str(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0))
            if gpus is None:
                self.err(where, "--gpus must be known before run time (it must equal the %s limit)" % GPU)
            elif str(gpus) != limit:
                self.err(where, "--gpus=%s but the container's %s limit is %s: the agent would offer "
                         "GPUs it does not have, or leave some idle" % (gpus, GPU, limit))
            shm = [v for m, v in mounts if m.get("mountPath") == "/dev/shm"]
            if not shm or (shm[0].get("emptyDir") or {}).get("medium") != "Memory":
                self.err(where, "/dev/shm must be a memory-backed emptyDir (medium: Memory): NCCL and "
                         "the c10d store outgrow the runtime's 64 MiB default")


# --------------------------------------------------------------------------- schemas

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")


def schema_validator():
    """argv prefix of the schema validator, or None (with the reason)."""
    node = shutil.which("node")
    if node is None:
        return None, "no node"
    if not os.path.isdir(os.path.join(SCHEMA_DIR, "node_modules", "kubernetes-models")):
        return None, "tests/deploy/schema/node_modules missing (scripts/install-deps.d/deploy-schemas)"
    return [node, os.path.join(SCHEMA_DIR, "validate_schemas.mjs")], None


def validate_schemas(validator, overlay, docs):
    """Every object against the Kubernetes (and Prometheus Operator) API
    schemas: types, enums, required fields. Returns [error]."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump([d for d in docs if isinstance(d, dict)], f)
        f.flush()
        proc = subprocess.run(validator + [f.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=120)
    if proc.returncode == 0:
        return []
    lines = [l for l in proc.stdout.splitlines() if l.strip()] or ["validator exited %d" % proc.returncode]
    return ["%s: schema: %s" % (overlay, l) for l in lines]


# --------------------------------------------------------------------------- images

def check_dockerfiles(docker_dir):
    """The Dockerfiles build with the project's own scripts (so they cannot
    drift from CI) and ship a non-root runtime stage holding the binaries
    where the manifests run them. Returns [error]."""
    errors = []
    paths = sorted(glob.glob(os.path.join(docker_dir, "Dockerfile.*")))
    paths = [p for p in paths if not p.endswith(".dockerignore")]
    if not paths:
        return ["docker: no Dockerfile.* under %s" % docker_dir]
    for path in paths:
        name = os.path.basename(path)
        with open(path) as f:
            text = re.sub(r"\\\n", " ", f.read())
        runs = [l.strip()[4:] for l in text.splitlines() if l.strip().startswith("RUN ")]
        stages = [l for l in text.splitlines() if l.startswith("FROM ")]
        last = text[text.rindex("\nFROM "):] if len(stages) > 1 else ""
        if not any(re.match(r"^scripts/install-deps\b", r) for r in runs):
            errors.append("docker/%s: does not RUN scripts/install-deps (CI's dependency script)" % name)
        if not any(re.search(r"(^|\s)scripts/build\b", r) for r in runs):
            errors.append("docker/%s: does not build with scripts/build (CI's build script)" % name)
        if re.search(r"(^|\s)(ninja|make)\s", " ".join(runs)) or any(
                re.match(r"^cmake --build", r) for r in runs):
            errors.append("docker/%s: builds with its own commands besides scripts/build" % name)
        if len(stages) < 2:
            errors.append("docker/%s: not multi-stage (the runtime stage must not hold the toolchain)" % name)
            continue
        if "COPY --from=build /out/bin/ %s/" % IMAGE_BIN_DIR not in last:
            errors.append("docker/%s: the runtime stage does not put the binaries in %s" % (name, IMAGE_BIN_DIR))
        if not re.search(r"^USER 10001(:10001)?$", last, re.MULTILINE):
            errors.append("docker/%s: the runtime stage does not run as uid 10001 (the manifests' runAsUser)"
                          % name)
        if "-name 'tunefleet*'" not in text:
            errors.append("docker/%s: does not ship every tunefleet* binary (the trainer needs %s beside it)"
                          % (name, TRAINER_WORKER))
        if not re.search(r"\bsqlite3\b", last):
            errors.append("docker/%s: the runtime stage lacks sqlite3 (deploy/backup/scheduler-backup.sh)" % name)
    # ... and CI reaches the same scripts: .ci/run -> scripts/test ->
    # scripts/build -> scripts/install-deps.
    root = os.path.dirname(os.path.abspath(docker_dir))
    chain = ((".ci/run", r"(^|\s)scripts/test\b"), ("scripts/test", r'"\$here/build"|scripts/build\b'),
             ("scripts/build", r'"\$here/install-deps"|scripts/install-deps\b'))
    for script, pattern in chain:
        try:
            with open(os.path.join(root, script)) as f:
                body = "\n".join(l for l in f.read().splitlines() if not l.lstrip().startswith("#"))
        except OSError as e:
            errors.append("docker: CI's %s is not readable (%s)" % (script, e))
            continue
        if not re.search(pattern, body, re.MULTILINE):
            errors.append("docker: CI's %s no longer runs %s, so the images and CI may drift"
                          % (script, pattern))
    return errors


# --------------------------------------------------------------------------- smoke run

# Flags a smoke run replaces: local ports, a scratch data dir and keys file.
SMOKE_OVERRIDES = ("listen", "metrics_listen", "health_listen", "data_dir", "keys_file", "port_file",
                   "internal_key_file", "artifacts_dir", "models_dir")
SMOKE_KEYS = ("f48abe39545f9e9b1fb4884fcac0568ca12dbff8c934c0ace466cb83e60f39ce "
              "smoke tenant smoke\n")


SMOKE_DONE = {}  # (binary, flag values) -> result, shared across overlays


def is_tls_file(flag):
    """TLS files exist only in the cluster: smoke runs leave these flags out."""
    return flag.startswith(("tls_", "client_tls_", "scheduler_tls_"))


def smoke_run(flags, where, binary, values, scratch):
    key = (binary, tuple(sorted((k, v) for k, v in values.items()
                                if k not in SMOKE_OVERRIDES and not (is_tls_file(k) and v))))
    if key not in SMOKE_DONE:
        SMOKE_DONE[key] = smoke_run_once(flags, where, binary, values, scratch)
    return SMOKE_DONE[key]


LIVE_METRICS = set()  # metric families seen on the smoke-run binaries' /metrics


def scrape_metrics(port_file):
    """GETs /metrics from the port in port_file; adds the families to
    LIVE_METRICS. Returns an error string or None."""
    import urllib.request
    try:
        with open(port_file) as f:
            port = json.load(f).get("metrics_port")
        if not port:
            return "the port file names no metrics port"
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    except (OSError, ValueError) as e:
        return str(e)
    LIVE_METRICS.update(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    return None


def smoke_run_once(flags, where, binary, values, scratch):
    """Starts binary with the container's flag values (ports, data dir and keys
    replaced by local ones; TLS files, which exist only in the cluster, left
    out), waits until it is listening, sends SIGTERM and expects exit 0.
    Catches values the binary rejects (a malformed duration, a bad number).
    Returns an error string or None."""
    d = tempfile.mkdtemp(prefix=binary + "-", dir=scratch)
    keys = os.path.join(d, "keys.txt")
    with open(keys, "w") as f:
        f.write(SMOKE_KEYS)
    ports = os.path.join(d, "ports.json")
    argv = [flags.path(binary)]
    for name, value in sorted(values.items()):
        if name in SMOKE_OVERRIDES or (is_tls_file(name) and value):
            continue
        if value is None:  # only known at run time (the pod's IP or name)
            value = "127.0.0.1:1" if name.endswith("_address") else "smoke"
        if name == "device" and str(value).startswith("cuda") and not os.path.exists("/dev/nvidiactl"):
            # No GPU on this machine: the replica starts on the CPU (the
            # static check pairs --device=cuda with the GPU request).
            value = "cpu"
        argv.append("--%s=%s" % (name, value))
    argv += ["--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--data_dir=" + os.path.join(d, "data"),
             "--keys_file=" + keys, "--port_file=" + ports]
    if "health_listen" in values:
        argv.append("--health_listen=127.0.0.1:0")
    for name in ("artifacts_dir", "models_dir"):
        if name in values:
            os.makedirs(os.path.join(d, name))
            argv.append("--%s=%s" % (name, os.path.join(d, name)))
    if "internal_key_file" in values:
        internal = os.path.join(d, "internal.key")
        with open(internal, "w") as f:
            f.write("smoke-internal-key\n")
        argv.append("--internal_key_file=" + internal)
    log_path = os.path.join(d, "log.txt")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=d)
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None and not os.path.exists(ports):
            time.sleep(0.05)
        started = os.path.exists(ports)
        scrape_error = None
        if started and proc.poll() is None and values.get("metrics_listen") != "off":
            scrape_error = scrape_metrics(ports)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with open(log_path) as f:
        lines = f.readlines()
    tail = "".join(lines[-8:])
    if started and values.get("log_format") == "json":
        if not lines:
            return "%s: %s --log_format=json logged nothing" % (where, binary)
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or not {"time", "level", "logger", "message"} <= set(entry):
                return "%s: %s --log_format=json wrote a line that is not a JSON object with " \
                       "time, level, logger and message: %r" % (where, binary, line)
    if not started:
        return "%s: %s did not start with the manifest's flags (%s); it said:\n%s" % (
            where, binary, " ".join(argv[1:]), tail)
    if scrape_error:
        return "%s: %s: GET /metrics: %s" % (where, binary, scrape_error)
    if proc.returncode != 0:
        return "%s: %s exited %s after SIGTERM; it said:\n%s" % (where, binary, proc.returncode, tail)
    return None


# --------------------------------------------------------------------------- self-test

def containers_of(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d["spec"]["template"]["spec"]["containers"]
    raise KeyError((kind, name))


def doc_of(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].startswith(name):
            return d
    raise KeyError((kind, name))


def mutations():
    """(description, expected error text, function that breaks the docs)"""

    def rename_flag(docs):
        c = containers_of(docs, "StatefulSet", "tunefleet-dataset")[0]
        c["args"] = [a.replace("--max_file_bytes=", "--max_file_byte=") for a in c["args"]]

    def probe_port(docs):
        containers_of(docs, "StatefulSet", "tunefleet-scheduler")[0]["readinessProbe"]["grpc"]["port"] = 50051

    def short_grace(docs):
        doc_of(docs, "Deployment", "tunefleet-serving")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"] = 30

    def long_drain(docs):
        doc_of(docs, "ConfigMap", "tunefleet-config")["data"]["TUNEFLEET_DRAIN_TIMEOUT"] = "2m"

    def selector_typo(docs):
        doc_of(docs, "Service", "tunefleet-dataset")["spec"]["selector"][
            "app.kubernetes.io/name"] = "tunefleet-datset"

    def drop_config_map(docs):
        docs.remove(doc_of(docs, "ConfigMap", "tunefleet-config"))

    def secret_typo(docs):
        for v in doc_of(docs, "DaemonSet", "tunefleet-trainer")["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                v["secret"]["secretName"] = "tunefleet-keyz"

    def pvc_missing(docs):
        doc_of(docs, "Deployment", "tunefleet-serving")["spec"]["template"]["spec"]["volumes"].append(
            {"name": "models", "persistentVolumeClaim": {"claimName": "tunefleet-models"}})

    def mount_typo(docs):
        containers_of(docs, "StatefulSet", "tunefleet-dataset")[0]["volumeMounts"][0]["name"] = "dta"

    def target_port(docs):
        doc_of(docs, "Service", "tunefleet-serving")["spec"]["ports"][0]["targetPort"] = "grcp"

    def scrape_port(docs):
        doc_of(docs, "DaemonSet", "tunefleet-trainer")["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/port"] = "9090"

    def gpu_limit(docs):
        c = containers_of(docs, "Deployment", "tunefleet-serving")[0]
        c["resources"].setdefault("requests", {})[GPU] = 2
        c["resources"].setdefault("limits", {})[GPU] = 1

    def root_fs(docs):
        containers_of(docs, "Deployment", "tunefleet-serving")[0]["securityContext"][
            "readOnlyRootFilesystem"] = False

    def keys_path(docs):
        c = containers_of(docs, "StatefulSet", "tunefleet-scheduler")[0]
        c["args"] = [("--keys_file=/etc/tunefleet/keys.txt" if a.startswith("--keys_file=") else a)
                     for a in c["args"]]

    def undefined_var(docs):
        c = containers_of(docs, "StatefulSet", "tunefleet-scheduler")[0]
        c["args"] = [a.replace("$(TUNEFLEET_LOG_LEVEL)", "$(TUNEFLEET_LOGLEVEL)") for a in c["args"]]

    def missing_doc_name(docs):
        del doc_of(docs, "ServiceAccount", "tunefleet")["metadata"]["name"]

    def tls_unmounted(docs):
        data = doc_of(docs, "ConfigMap", "tunefleet-config")["data"]
        data["TUNEFLEET_SERVING_TLS_CERT"] = "/etc/tunefleet/certs/tls.crt"

    def worker_elsewhere(docs):
        containers_of(docs, "DaemonSet", "tunefleet-trainer")[0]["args"].append(
            "--worker_binary=/opt/tunefleet/tunefleet-train-worker")

    def gpus_mismatch(docs):
        doc_of(docs, "ConfigMap", "tunefleet-config")["data"]["TUNEFLEET_TRAINER_GPUS"] = "4"

    def shm_on_disk(docs):
        for v in doc_of(docs, "DaemonSet", "tunefleet-trainer")["spec"]["template"]["spec"]["volumes"]:
            if v["name"] == "dshm":
                v["emptyDir"].pop("medium")

    def shared_rwo(docs):
        doc_of(docs, "PersistentVolumeClaim", "tunefleet-shared")["spec"]["accessModes"] = ["ReadWriteOnce"]

    def no_policies(docs):
        docs[:] = [d for d in docs if d["kind"] != "NetworkPolicy"]

    def policy_blocks_trainer(docs):
        doc_of(docs, "NetworkPolicy", "tunefleet-dataset")["spec"]["ingress"][0]["from"] = [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tunefleet-scheduler"}}}]

    def trainer_plaintext(docs):
        c = containers_of(docs, "DaemonSet", "tunefleet-trainer")[0]
        c["args"] = [a for a in c["args"] if not a.startswith("--client_tls_")]

    def trainer_no_client_cert(docs):
        c = containers_of(docs, "DaemonSet", "tunefleet-trainer")[0]
        c["args"] = [a for a in c["args"] if not a.startswith(("--client_tls_cert_file=",
                                                               "--client_tls_key_file="))]

    def dataset_tls_only(docs):
        c = containers_of(docs, "StatefulSet", "tunefleet-dataset")[0]
        c["args"] = [a for a in c["args"] if not a.startswith("--tls_client_ca=")]

    def client_cert_unmounted(docs):
        c = containers_of(docs, "StatefulSet", "tunefleet-scheduler")[0]
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "internal-tls"]

    def tls_probe(docs):
        containers_of(docs, "Deployment", "tunefleet-serving")[0]["readinessProbe"]["grpc"]["port"] = 50054

    def internal_key_unprojected(docs):
        c = containers_of(docs, "DaemonSet", "tunefleet-trainer")[0]
        c["args"] = [("--internal_key_file=/etc/tunefleet/keys/internal.key"
                      if a.startswith("--internal_key_file=") else a) for a in c["args"]]

    def metric_typo(docs):
        r = doc_of(docs, "PrometheusRule", "tunefleet")["spec"]["groups"][0]["rules"][0]
        r["expr"] = r["expr"].replace("tunefleet_scheduler_jobs", "tunefleet_scheduler_job")

    def dashboard_json(docs):
        data = doc_of(docs, "ConfigMap", "tunefleet-grafana-dashboard")["data"]
        data["tunefleet-dashboard.json"] = data["tunefleet-dashboard.json"][:-3]

    def dashboard_metric(docs):
        data = doc_of(docs, "ConfigMap", "tunefleet-grafana-dashboard")["data"]
        data["tunefleet-dashboard.json"] = data["tunefleet-dashboard.json"].replace(
            "tunefleet_serving_tokens_total", "tunefleet_serving_token_total")

    def bad_promql(docs):
        r = doc_of(docs, "PrometheusRule", "tunefleet")["spec"]["groups"][0]["rules"][0]
        r["expr"] = "sum(" + r["expr"]

    def monitor_port(docs):
        doc_of(docs, "ServiceMonitor", "tunefleet")["spec"]["endpoints"][0]["port"] = "metric"

    def serving_on_cpu(docs):
        doc_of(docs, "ConfigMap", "tunefleet-config")["data"]["TUNEFLEET_SERVING_DEVICE"] = "cpu"

    def serving_without_gpu(docs):
        res = containers_of(docs, "Deployment", "tunefleet-serving")[0]["resources"]
        res["requests"].pop(GPU)
        res["limits"].pop(GPU)

    return [m for m in [
        ("a TLS certificate that is not mounted", "--tls_cert=/etc/tunefleet/certs/tls.crt is not in a mounted Secret", tls_unmounted),
        ("a worker binary where the image has none", "the images install tunefleet-train-worker", worker_elsewhere),
        ("--gpus not equal to the GPU limit", "--gpus=4 but the container's nvidia.com/gpu limit is 8", gpus_mismatch),
        ("/dev/shm on disk", "/dev/shm must be a memory-backed emptyDir", shm_on_disk),
        ("a ReadWriteOnce shared volume", "lack ReadWriteMany", shared_rwo),
        ("no NetworkPolicies", "NetworkPolicy: none in the render", no_policies),
        ("a NetworkPolicy that blocks trainer -> dataset", "no NetworkPolicy lets it reach StatefulSet/tunefleet-dataset", policy_blocks_trainer),
        ("TLS on a service dialled in plaintext", "serves TLS but tunefleet-trainer dials it in plaintext", trainer_plaintext),
        ("gpu overlay: a call without client TLS flags", "runs mTLS between the services, but tunefleet-trainer dials it without client TLS flags", trainer_plaintext),
        ("mTLS callee dialled without a client certificate", "requires a client certificate (mTLS) but tunefleet-trainer presents none", trainer_no_client_cert),
        ("gpu overlay: a callee without mTLS", "StatefulSet/tunefleet-dataset does not require client certificates", dataset_tls_only),
        ("a client certificate that is not mounted", "--client_tls_cert_file=/etc/tunefleet/internal-tls/tls.crt is not in a mounted Secret", client_cert_unmounted),
        ("a plaintext gRPC probe on a TLS port", "but TLS is on", tls_probe),
        ("internal key not projected by its Secret volume", "does not project 'internal.key'", internal_key_unprojected),
        ("an alert on a metric no service exports", "queries tunefleet_scheduler_job,", metric_typo),
        ("a dashboard that is not JSON", "is not valid JSON", dashboard_json),
        ("a dashboard panel on a metric no service exports", "queries tunefleet_serving_token_total", dashboard_metric),
        ("an alert expression promtool rejects", "promtool check rules", bad_promql),
        ("a ServiceMonitor on a port no Service has", "endpoint port 'metric'", monitor_port),
        ("gpu overlay serving without a GPU", "tunefleet-serving must request nvidia.com/gpu", serving_without_gpu),
        ("gpu overlay serving on the CPU", "tunefleet-serving requests nvidia.com/gpu but runs --device=cpu", serving_on_cpu),
        ("a flag the binary does not have", "does not accept the flag --max_file_byte", rename_flag),
        ("readiness probe on the wrong port", "readinessProbe checks gRPC port 50051", probe_port),
        ("grace period not above the drain timeout", "terminationGracePeriodSeconds 30", short_grace),
        ("drain timeout raised in the ConfigMap", "is not above --drain_timeout 2m", long_drain),
        ("Service selector typo", "matches no pod template", selector_typo),
        ("ConfigMap missing from the render", "ConfigMap 'tunefleet-config", drop_config_map),
        ("undocumented Secret", "Secret 'tunefleet-keyz'", secret_typo),
        ("PVC missing from the render", "PersistentVolumeClaim 'tunefleet-models'", pvc_missing),
        ("volumeMount of no volume", "volumeMount 'dta'", mount_typo),
        ("Service targetPort of no container port", "targetPort 'grcp'", target_port),
        ("Prometheus annotation on the wrong port", "prometheus.io/port is '9090'", scrape_port),
        ("GPU requests above limits", "requests (2) must equal limits (1)", gpu_limit),
        ("writable root filesystem", "readOnlyRootFilesystem is not true", root_fs),
        ("keys file outside the Secret mount", "is not in a mounted Secret volume", keys_path),
        ("$(VAR) not in the environment", "$(TUNEFLEET_LOGLEVEL)", undefined_var),
        ("document without metadata.name", "missing metadata.name", missing_doc_name),
    ] if m[2] is not bad_promql or shutil.which("promtool")]


# --------------------------------------------------------------------------- main

def render(kubectl, overlay):
    proc = subprocess.run([kubectl, "kustomize", overlay], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError("kubectl kustomize %s failed:\n%s" % (overlay, proc.stderr))
    return list(yaml.safe_load_all(proc.stdout))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", required=True, help="directory holding the tunefleet-* binaries")
    ap.add_argument("--deploy-dir", default=os.path.join(here, "..", "..", "deploy"))
    ap.add_argument("--source-dir", default=os.path.join(here, "..", ".."),
                    help="repository root, where the services' metric names are read")
    ap.add_argument("--docker-dir", default=os.path.join(here, "..", "..", "docker"))
    ap.add_argument("--kubectl", default=os.environ.get("TUNEFLEET_KUBECTL", "kubectl"),
                    help="kubectl with 'kustomize' (default: $TUNEFLEET_KUBECTL or kubectl)")
    ap.add_argument("--self-test", action="store_true",
                    help="also break the render on purpose and require each mistake to be found")
    ap.add_argument("--smoke-run", action="store_true",
                    help="also start each binary with each container's flags, then SIGTERM it")
    ap.add_argument("overlays", nargs="*", help="overlay dirs (default: every deploy/overlays/*)")
    args = ap.parse_args()

    kubectl = shutil.which(args.kubectl)
    if kubectl is None:
        print("SKIP: %s not found (Debian: apt-get install kubernetes-client)" % args.kubectl)
        return SKIP
    probe = subprocess.run([kubectl, "kustomize", "--help"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        print("SKIP: %s has no 'kustomize' subcommand" % kubectl)
        return SKIP
    services = ("dataset", "scheduler", "trainer", "serving")
    missing = [s for s in services
               if not os.access(os.path.join(args.bin_dir, "tunefleet-" + s), os.X_OK)]
    if missing:
        print("SKIP: binaries not built in %s: %s (build them first: ninja tunefleet-%s)"
              % (args.bin_dir, ", ".join("tunefleet-" + s for s in missing), " tunefleet-".join(missing)))
        return SKIP

    overlays = [o if os.path.isdir(o) else os.path.join(args.deploy_dir, "overlays", o)
                for o in args.overlays] or sorted(
        os.path.join(args.deploy_dir, "overlays", d)
        for d in os.listdir(os.path.join(args.deploy_dir, "overlays"))
        if os.path.isfile(os.path.join(args.deploy_dir, "overlays", d, "kustomization.yaml")))
    if not overlays:
        print("FAIL: no overlays under %s" % args.deploy_dir)
        return 1
    flags = Flags(args.bin_dir)
    failures = 0
    docker_errors = check_dockerfiles(args.docker_dir)
    for e in docker_errors:
        print("FAIL " + e)
    if docker_errors:
        failures += 1
    else:
        print("ok   docker: the Dockerfiles build with scripts/install-deps and scripts/build")
    metrics = exported_metrics(args.source_dir)
    if not metrics:
        print("FAIL: no tunefleet_ metrics found in the sources under %s" % args.source_dir)
        return 1
    renders = {}
    validator, why_not = schema_validator()
    if validator is None:
        print("note: objects not validated against the Kubernetes API schemas: %s" % why_not)
    for overlay in overlays:
        name = os.path.basename(os.path.normpath(overlay))
        runs = []
        try:
            docs = render(kubectl, overlay)
            checker = Checker(name, docs, flags, metrics)
            errors = checker.run()
            runs = checker.runs
        except (RuntimeError, yaml.YAMLError, subprocess.TimeoutExpired) as e:
            docs, errors = None, ["%s: %s" % (name, e)]
        if validator is not None and docs is not None:
            errors += validate_schemas(validator, name, docs)
        if args.smoke_run and not errors:
            with tempfile.TemporaryDirectory(prefix="tunefleet-deploy-") as scratch:
                for where, binary, values in runs:
                    problem = smoke_run(flags, "%s: %s" % (name, where), binary, values, scratch)
                    if problem:
                        errors.append(problem)
        renders[name] = docs
        kinds = {}
        for d in docs or []:
            if isinstance(d, dict):
                kinds[d.get("kind")] = kinds.get(d.get("kind"), 0) + 1
        if errors:
            failures += 1
            print("FAIL %s (%d problems):" % (name, len(errors)))
            for e in errors:
                print("  " + e)
        else:
            print("ok   %s: %d objects%s (%s)%s" % (
                name, len(docs), " valid against the API schemas" if validator else "", ", ".join(
                "%d %s" % (n, k) for k, n in sorted(kinds.items())),
                "; %d containers start and drain with their flags" % len(runs) if args.smoke_run else ""))

    if args.self_test:
        base = renders.get("gpu")
        if base is None:
            print("FAIL self-test: needs a clean render of the gpu overlay")
            return 1
        for what, expected, breaks in mutations():
            docs = copy.deepcopy(base)
            breaks(docs)
            errors = Checker("gpu", docs, flags, metrics).run()
            if any(expected in e for e in errors):
                print("ok   self-test: %s is caught" % what)
            else:
                failures += 1
                print("FAIL self-test: %s is not caught (wanted %r); got:\n  %s"
                      % (what, expected, "\n  ".join(errors) or "no errors"))

        if validator is not None:
            docs = copy.deepcopy(base)
            doc_of(docs, "HorizontalPodAutoscaler", "tunefleet-serving")["spec"]["maxReplicas"] = "eight"
            errors = validate_schemas(validator, "gpu", docs)
            if any("maxReplicas must be integer" in e for e in errors):
                print("ok   self-test: a field of the wrong type is caught by the schemas")
            else:
                failures += 1
                print("FAIL self-test: a field of the wrong type is not caught by the schemas; got:\n  %s"
                      % "\n  ".join(errors or ["no errors"]))

    if args.smoke_run and LIVE_METRICS:
        named = set()
        for d in (renders.get("gpu") or []):
            if isinstance(d, dict) and d.get("kind") == "PrometheusRule":
                named |= metrics_in(json.dumps(d))
            if isinstance(d, dict) and d.get("kind") == "ConfigMap":
                named |= metrics_in(json.dumps(d.get("data") or {}))
        named = {re.sub(r"_(bucket|sum|count)$", "", n) for n in named}
        print("note: %d of the %d metrics the alerts and dashboard query were on the idle services' "
              "/metrics (the rest appear with traffic): %s" % (
                  len(named & LIVE_METRICS), len(named), ", ".join(sorted(named & LIVE_METRICS))))
    print("deploy check: %s" % ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
