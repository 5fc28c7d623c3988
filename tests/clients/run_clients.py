#!/usr/bin/env python3
"""Runs one of the example clients (examples/python, examples/node) against a
real local fleet, for CTest.

Writes a tiny Phi-3 base model, starts `tunefleet local up` on a fresh
directory, runs the client's whole lifecycle (it checks every step and exits
non-zero at the first that does not hold), and always stops the fleet with
`tunefleet local down`. Exits 77 (CTest's SKIP_RETURN_CODE) with the reason
when the client's runtime is missing: no grpcio for the Python client; no
node, or npm could not install the Node client's packages.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_DIR = os.path.join(ROOT, "examples", "node")
NODE_PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs")
SKIP = 77
BINARIES = ("tunefleet", "tunefleet-model", "tunefleet-dataset", "tunefleet-scheduler",
            "tunefleet-trainer", "tunefleet-train-worker", "tunefleet-serving")


def log(msg):
    print("run_clients: " + msg, flush=True)


def skip(reason):
    log("SKIP: " + reason)
    sys.exit(SKIP)


def python_client_ready(stubs):
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        skip("%s has no %s (Debian: apt-get install python3-grpcio python3-protobuf)"
             % (sys.executable, e.name))
    if not os.path.isdir(os.path.join(stubs, "tunefleet", "v1")):
        sys.exit("run_clients: no generated stubs in %s: build the target tunefleet_python_stubs"
                 % stubs)
    return [sys.executable, os.path.join(ROOT, "examples", "python", "tunefleet_lifecycle.py"),
            "--stubs", stubs]


def node_client_ready():
    """Installs the Node client's packages from its lock file when they are
    missing or stale (a stamp of the lock file's hash, as install-deps.d does)."""
    node = shutil.which("node")
    if not node:
        skip("node not found (Debian: apt-get install nodejs npm)")
    lock = os.path.join(NODE_DIR, "package-lock.json")
    with open(lock, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(NODE_DIR, "node_modules", ".tunefleet-lock.sha256")
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""

    def resolvable():
        probe = "for (const p of %s) require.resolve(p)" % json.dumps(list(NODE_PACKAGES))
        return subprocess.run([node, "-e", probe], cwd=NODE_DIR, capture_output=True).returncode == 0

    if have != want or not resolvable():
        npm = shutil.which("npm")
        if not npm:
            skip("the Node client's packages are not installed and npm is not found "
                 "(install them with: npm ci --prefix examples/node)")
        log("installing the Node client's packages: npm ci --prefix examples/node")
        try:
            p = subprocess.run([npm, "ci", "--prefix", NODE_DIR, "--no-audit", "--no-fund",
                                "--loglevel=error"], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            skip("npm ci did not finish in 300 s (is the npm registry reachable?)")
        if p.returncode != 0:
            errors = [l for l in p.stderr.splitlines() if "A complete log" not in l]
            skip("npm ci failed (is the npm registry reachable?): %s"
                 % " / ".join(errors[:3] or ["exit %d" % p.returncode]))
        with open(stamp, "w") as f:
            f.write(want + "\n")
        if not resolvable():
            sys.exit("run_clients: npm ci succeeded but %s cannot be loaded" % ", ".join(NODE_PACKAGES))
    return [node, os.path.join(NODE_DIR, "tunefleet_lifecycle.js")]


def tail_logs(data_dir, lines=30):
    logs = os.path.join(data_dir, "logs")
    if not os.path.isdir(logs):
        return
    for name in sorted(os.listdir(logs)):
        path = os.path.join(logs, name)
        with open(path, errors="replace") as f:
            end = f.readlines()[-lines:]
        print("--- end of %s" % path, flush=True)
        sys.stdout.writelines(end)
    sys.stdout.flush()


def stop_fleet(tunefleet, data_dir, env):
    try:
        p = subprocess.run([tunefleet, "local", "down", "--data-dir", data_dir], env=env,
                           capture_output=True, text=True, timeout=90)
        log("tunefleet local down: exit %d %s" % (p.returncode, p.stderr.strip()))
        if p.returncode == 0:
            return True
    except subprocess.TimeoutExpired:
        log("tunefleet local down did not finish in 90 s")
    # Last resort: the services this run started, by the pids fleet.json names.
    fleet_json = os.path.join(data_dir, "fleet.json")
    if os.path.exists(fleet_json):
        with open(fleet_json) as f:
            services = json.load(f).get("services", {})
        for name, s in services.items():
            pid = int(s.get("pid", 0))
            if pid > 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                    log("killed %s (pid %d)" % (name, pid))
                except ProcessLookupError:
                    pass
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=("python", "node"), required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--stubs", help="the generated Python stubs (build/python)")
    ap.add_argument("--work-dir", required=True, help="where the fleet's directory is made")
    ap.add_argument("--client-timeout", type=float, default=480)
    args = ap.parse_args()

    client = (python_client_ready(args.stubs or os.path.join(args.bin_dir, "..", "python"))
              if args.client == "python" else node_client_ready())
    missing = [b for b in BINARIES if not os.access(os.path.join(args.bin_dir, b), os.X_OK)]
    if missing:
        sys.exit("run_clients: missing in %s: %s (build them first)"
                 % (args.bin_dir, " ".join(missing)))

    os.makedirs(args.work_dir, exist_ok=True)
    data = tempfile.mkdtemp(prefix=args.client + "-", dir=args.work_dir)
    models = os.path.join(data, "models")
    # Every process that runs the decoder on the CPU must not spin in OpenMP.
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONDONTWRITEBYTECODE="1")
    # The client talks to this fleet only (--fleet), whatever the caller's shell exports.
    for name in ("TUNEFLEET_DATASET", "TUNEFLEET_SCHEDULER", "TUNEFLEET_SERVING",
                 "TUNEFLEET_API_KEY", "TUNEFLEET_PYTHON_STUBS"):
        env.pop(name, None)
    tunefleet = os.path.join(args.bin_dir, "tunefleet")
    t0 = time.monotonic()

    subprocess.run([os.path.join(args.bin_dir, "tunefleet-model"), "init-tiny", "--out",
                    os.path.join(models, "phi-3-tiny"), "--seed", "1", "--hidden", "128",
                    "--intermediate", "256", "--layers", "2", "--lm_head_scale", "40"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    log("wrote a tiny Phi-3 base model in %.1f s" % (time.monotonic() - t0))

    ok = False
    try:
        t = time.monotonic()
        try:
            up = subprocess.run([tunefleet, "local", "up", "--data-dir", data, "--models-dir",
                                 models], env=env, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            log("FAILED: tunefleet local up did not return in 180 s")
            return 1
        sys.stdout.write(up.stdout)
        if up.returncode != 0:
            log("FAILED: tunefleet local up exited %d: %s" % (up.returncode, up.stderr.strip()))
            return 1
        log("the fleet is up in %.1f s" % (time.monotonic() - t))

        t = time.monotonic()
        cmd = client + ["--fleet", data]
        log("$ " + " ".join(cmd))
        try:
            code = subprocess.run(cmd, env=env, timeout=args.client_timeout).returncode
        except subprocess.TimeoutExpired:
            log("FAILED: the %s client did not finish in %.0f s" % (args.client,
                                                                   args.client_timeout))
            return 1
        log("the %s client exited %d after %.1f s" % (args.client, code, time.monotonic() - t))
        ok = code == 0
        return 0 if ok else 1
    finally:
        stopped = stop_fleet(tunefleet, data, env)
        if not ok:
            tail_logs(data)
            log("the fleet's directory is kept: " + data)
        elif stopped:
            shutil.rmtree(data, ignore_errors=True)
        log("%.1f s in all" % (time.monotonic() - t0))


if __name__ == "__main__":
    sys.exit(main())
