#!/usr/bin/python3
"""Every metric the Grafana dashboard and the Prometheus alert rules in
deploy/observability query is one a live local fleet really exports.

Starts `tunefleet local up` on a tiny model, runs one tiny LoRA job to its
end, deploys the result, sends one chat and one prompt the content filter
blocks, then GETs /metrics of each service (the metrics ports in fleet.json)
and checks every metric name in the rules' and the dashboard's PromQL
expressions against the sample names on those pages (so a histogram's
_bucket/_sum/_count series must be queried by those names), and every label
a {...} selector matches on against the labels of that metric's samples.
Fails naming each metric no service exports (or label it lacks), with the
expressions that use it.

Exit status: 0 all exported, 1 missing metrics or a fleet step failed,
77 skipped (PyYAML or the binaries are missing).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARIES = ("tunefleet", "tunefleet-model", "tunefleet-dataset", "tunefleet-scheduler",
            "tunefleet-trainer", "tunefleet-train-worker", "tunefleet-serving")

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "by", "without", "on", "ignoring", "group_left", "group_right", "and",
    "or", "unless", "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "predict_linear", "histogram_quantile", "absent", "absent_over_time", "abs", "ceil", "floor",
    "round", "clamp", "clamp_min", "clamp_max", "label_replace", "label_join", "vector",
    "scalar", "time", "timestamp", "sort", "sort_desc", "changes", "resets", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "present_over_time", "exp", "ln", "log2", "log10", "sqrt", "sgn",
    "inf", "nan", "e", "day_of_month", "day_of_week", "hour", "minute", "month", "year",
}


def strip_strings_and_labels(expr):
    """The expression without string literals, label matchers ({...}),
    grouping clauses (by/without/on/ignoring (...)) and range selectors
    ([5m]), leaving metric names, functions and operators."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    return expr


def metric_names(expr):
    """Metric names in a PromQL expression: identifiers that are neither
    functions (followed by '('), keywords nor numbers or durations.
    Grafana's $variables and $__interval are left out."""
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", expr)
    text = strip_strings_and_labels(expr)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)", text):
        word = m.group(1)
        rest = text[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def selector_labels(expr):
    """{metric: {label names matched in its {...} selectors}}."""
    out = {}
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}", expr):
        names = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.setdefault(m.group(1), set()).update(names)
    return out


def rule_expressions(path):
    import yaml
    out = []
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not isinstance(doc, dict):
                continue
            groups = (doc.get("spec") or doc).get("groups") or []
            for g in groups:
                for r in g.get("rules") or []:
                    if r.get("expr"):
                        out.append(("%s: %s" % (os.path.basename(path),
                                                r.get("alert") or r.get("record")), str(r["expr"])))
    return out


def dashboard_expressions(path):
    out = []

    def walk(o, title):
        if isinstance(o, dict):
            title = o.get("title", title)
            for k, v in o.items():
                if k == "expr" and isinstance(v, str):
                    out.append(("%s: %s" % (os.path.basename(path), title), v))
                elif k == "query" and isinstance(v, str):
                    # a template variable: label_values(<metric>, <label>)
                    m = re.match(r"\s*label_values\(\s*([^,()]+)", v)
                    if m:
                        out.append(("%s: variable %s" % (os.path.basename(path), o.get("name")),
                                    m.group(1)))
                else:
                    walk(v, title)
        elif isinstance(o, list):
            for v in o:
                walk(v, title)

    with open(path) as f:
        walk(json.load(f), "")
    return out


def queried_metrics(observability_dir):
    """{metric name: [where it is used]} over every rule file and dashboard."""
    exprs = []
    for name in sorted(os.listdir(observability_dir)):
        path = os.path.join(observability_dir, name)
        if name.endswith(".json"):
            exprs += dashboard_expressions(path)
        elif name.endswith((".yaml", ".yml")) and name != "kustomization.yaml":
            exprs += rule_expressions(path)
    used, labels = {}, {}
    for where, expr in exprs:
        for m in metric_names(expr):
            used.setdefault(m, []).append(where)
        for m, names in selector_labels(expr).items():
            for n in names:
                labels.setdefault((m, n), []).append(where)
    return used, labels, len(exprs)


def exposition_samples(text):
    """{sample name: set of its label names} on a Prometheus text page."""
    names = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?", line)
        if m:
            names.setdefault(m.group(1), set()).update(
                re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=\"", m.group(2) or ""))
    return names


# --------------------------------------------------------------------------- the fleet

class Fleet:
    def __init__(self, bin_dir, work):
        self.bin = bin_dir
        self.data = os.path.join(work, "fleet")
        self.models = os.path.join(work, "models")
        self.env = dict((k, v) for k, v in os.environ.items() if not k.startswith("TUNEFLEET_"))
        self.env["OMP_WAIT_POLICY"] = "PASSIVE"

    def run(self, *args, ok=True, timeout=300):
        cmd = [os.path.join(self.bin, "tunefleet"), *args]
        if args[0] != "local":
            cmd += ["--fleet", self.data]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if ok and p.returncode != 0:
            raise RuntimeError("'tunefleet %s' exited %d: %s" % (" ".join(args), p.returncode,
                                                                 p.stderr.strip()))
        return p

    def json(self, *args):
        return json.loads(self.run(*args, "--json").stdout)

    def logs_tail(self):
        out = []
        logs = os.path.join(self.data, "logs")
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            with open(os.path.join(logs, name), errors="replace") as f:
                out.append("--- %s\n%s" % (name, "".join(f.readlines()[-15:])))
        return "\n".join(out)


def exercise(fleet, work):
    """A tiny job to its end, a deployment, a chat and a blocked prompt."""
    subprocess.run([os.path.join(fleet.bin, "tunefleet-model"), "init-tiny", "--out",
                    os.path.join(fleet.models, "tiny"), "--seed", "1", "--hidden", "64",
                    "--intermediate", "128", "--layers", "2"],
                   check=True, stdout=subprocess.DEVNULL, env=fleet.env, timeout=120)
    fleet.run("local", "up", "--data-dir", fleet.data, "--models-dir", fleet.models)
    train = os.path.join(work, "train.jsonl")
    with open(os.path.join(ROOT, "examples", "data", "support_chat.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()[:40]
    with open(train, "w", encoding="utf-8") as f:
        f.writelines(lines)
    file_id = fleet.json("files", "upload", train)["id"]
    deadline = time.monotonic() + 60
    while fleet.json("files", "get", file_id).get("status") != "FILE_STATUS_PROCESSED":
        if time.monotonic() > deadline:
            raise RuntimeError("%s not processed after 60 s" % file_id)
        time.sleep(0.2)
    job = fleet.json("jobs", "create", "--model", "tiny", "--training-file", file_id,
                     "--validation-split", "0.2", "--epochs", "1", "--batch-size", "8",
                     "--lora-rank", "4", "--seed", "1", "--suffix", "metrics")
    fleet.run("jobs", "events", job["id"], "--follow", ok=False, timeout=300)
    job = fleet.json("jobs", "get", job["id"])
    if job.get("state") != "JOB_STATE_SUCCEEDED":
        raise RuntimeError("%s ended %s" % (job["id"], job.get("state")))
    dep = fleet.json("deployments", "create", "--model", job["result_model"], "--wait")
    fleet.run("chat", "--deployment", dep["id"], "--message", "How much does Lumo cost?",
              "--max-tokens", "8")
    blocked = fleet.run("chat", "--deployment", dep["id"], "--message",
                        "This shit lamp is broken, fix it", ok=False)
    if blocked.returncode != 4:
        raise RuntimeError("a profane prompt was not blocked (exit %d: %s)"
                           % (blocked.returncode, blocked.stderr.strip()))


def scrape(fleet):
    with open(os.path.join(fleet.data, "fleet.json")) as f:
        services = json.load(f)["services"]
    pages = {}
    for name, s in sorted(services.items()):
        url = "http://127.0.0.1:%d/metrics" % s["metrics_port"]
        pages[name] = urllib.request.urlopen(url, timeout=10).read().decode()
    return pages


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--observability-dir", default=os.path.join(ROOT, "deploy", "observability"))
    ap.add_argument("--work-dir", help="kept afterwards (default: a temporary directory)")
    args = ap.parse_args()
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("SKIP: PyYAML is not installed (apt-get install python3-yaml)")
        return SKIP
    missing = [b for b in BINARIES if not os.access(os.path.join(args.bin_dir, b), os.X_OK)]
    if missing:
        print("SKIP: not built in %s: %s" % (args.bin_dir, ", ".join(missing)))
        return SKIP

    used, labels, n_exprs = queried_metrics(args.observability_dir)
    if not used:
        print("FAIL: no metric names found in %s" % args.observability_dir)
        return 1
    work = args.work_dir or tempfile.mkdtemp(prefix="tunefleet-live-metrics-")
    if args.work_dir and os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    fleet = Fleet(args.bin_dir, work)
    t0 = time.monotonic()
    try:
        try:
            exercise(fleet, work)
            pages = scrape(fleet)
        finally:
            if os.path.exists(os.path.join(fleet.data, "fleet.json")):
                fleet.run("local", "down", "--data-dir", fleet.data, ok=False)
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as e:
        print("FAIL: the fleet: %s\n%s" % (e, fleet.logs_tail()))
        return 1
    exported = {}
    for name, page in pages.items():
        samples = exposition_samples(page)
        print("%-10s /metrics: %d sample names" % (name, len(samples)))
        for sample, names in samples.items():
            exported.setdefault(sample, set()).update(names)
    # kube-state-metrics and Prometheus' own series are not Tunefleet's to export.
    external = sorted(m for m in used if not m.startswith("tunefleet_"))
    if external:
        print("note: not Tunefleet metrics (kube-state-metrics, Prometheus): %s"
              % ", ".join(external))
    absent = sorted(m for m in used if m.startswith("tunefleet_") and m not in exported)
    print("%d metrics in %d expressions of %s; fleet run %.0f s"
          % (len(used), n_exprs, args.observability_dir, time.monotonic() - t0))
    for m in absent:
        print("FAIL %s is queried by %s but no service exports it"
              % (m, "; ".join(sorted(set(used[m])))))
    # Prometheus adds the target's labels (job, instance, namespace, pod, ...).
    target_labels = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
    unlabelled = sorted((m, n) for (m, n) in labels if m in exported and n not in target_labels
                        and n not in exported[m])
    for m, n in unlabelled:
        print("FAIL %s has no label %r (its labels: %s), which %s select on"
              % (m, n, ", ".join(sorted(exported[m])) or "none", "; ".join(sorted(set(labels[(m, n)])))))
    if not absent and not unlabelled:
        print("ok   every label the selectors match on is on its metric (%d metric/label pairs)"
              % sum(1 for (m, _) in labels if m.startswith("tunefleet_")))
    if not absent:
        print("ok   every Tunefleet metric the dashboard and the alert rules query is "
              "exported: %s" % ", ".join(sorted(m for m in used if m not in external)))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if absent or unlabelled else 0


if __name__ == "__main__":
    sys.exit(main())
