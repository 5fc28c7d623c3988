#!/usr/bin/python3
"""The scheduler backup procedure (deploy/backup/scheduler-backup.sh) on a
live database: a real tunefleet-scheduler runs on its data dir while another
connection keeps writing; the script backs the database up with VACUUM INTO,
restores the copy into a fresh data dir, and a second real scheduler opened
on the restored copy must report every job (its tunefleet_scheduler_jobs
gauges on /metrics).

Exit status: 0 passed, 1 failed, 77 skipped (no sqlite3 or no scheduler binary).
"""

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SKIP = 77
KEYS = "f48abe39545f9e9b1fb4884fcac0568ca12dbff8c934c0ace466cb83e60f39ce smoke tenant smoke\n"
STATES = {5: "succeeded", 6: "failed", 7: "cancelled"}  # terminal: the scheduler leaves them be
JOBS = 300


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def job_proto(job_id, state):
    """tunefleet.v1.Job{id = 1, state = 11}, encoded by hand."""
    raw = job_id.encode()
    return b"\x0a" + varint(len(raw)) + raw + b"\x58" + varint(state)


def padded_event():
    """A tunefleet.v1.JobEvent carrying 2 KiB in field 1000, which no version
    defines (parsers keep unknown fields)."""
    pad = os.urandom(2048)
    return varint((1000 << 3) | 2) + varint(len(pad)) + pad


def start_scheduler(binary, data_dir, scratch, name):
    keys = os.path.join(scratch, "keys.txt")
    with open(keys, "w") as f:
        f.write(KEYS)
    port_file = os.path.join(scratch, name + ".ports.json")
    log = open(os.path.join(scratch, name + ".log"), "w")
    proc = subprocess.Popen([binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                             "--keys_file=" + keys, "--data_dir=" + data_dir,
                             "--port_file=" + port_file, "--tick_interval=50ms"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None and not os.path.exists(port_file):
        time.sleep(0.05)
    if not os.path.exists(port_file):
        proc.kill()
        proc.wait()
        with open(log.name) as f:
            tail = "".join(f.readlines()[-10:])
        raise RuntimeError("%s did not start; it said:\n%s" % (name, tail))
    with open(port_file) as f:
        metrics_port = int(re.search(r'"metrics_port":\s*(\d+)', f.read()).group(1))
    return proc, metrics_port


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError("scheduler exited %s on SIGTERM" % proc.returncode)


def jobs_by_state(metrics_port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10).read().decode()
    return {m.group(1): int(float(m.group(2))) for m in
            re.finditer(r'^tunefleet_scheduler_jobs\{state="([a-z_]+)"\} (\S+)$', text, re.MULTILINE)}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--script", default=os.path.join(here, "..", "..", "deploy", "backup",
                                                       "scheduler-backup.sh"))
    args = ap.parse_args()
    binary = os.path.join(args.bin_dir, "tunefleet-scheduler")
    if not shutil.which("sqlite3"):
        print("SKIP: no sqlite3 (Debian: apt-get install sqlite3)")
        return SKIP
    if not os.access(binary, os.X_OK):
        print("SKIP: %s is not built" % binary)
        return SKIP

    with tempfile.TemporaryDirectory(prefix="tunefleet-backup-") as scratch:
        live = os.path.join(scratch, "live")
        proc, _ = start_scheduler(binary, live, scratch, "live")
        db_path = os.path.join(live, "scheduler.db")
        db = sqlite3.connect(db_path, timeout=30)
        expected = {}
        with db:
            for i in range(JOBS):
                state = list(STATES)[i % len(STATES)]
                db.execute("INSERT INTO jobs (id, tenant, request_id, queue_seq, resume_artifact, "
                           "retries, attempt, held_files, last_event_seq, state, proto) "
                           "VALUES (?, 'smoke', '', ?, '', 0, 1, '', 0, ?, ?)",
                           ("ftjob-backup%04d" % i, i, state, job_proto("ftjob-backup%04d" % i, state)))
                expected[STATES[state]] = expected.get(STATES[state], 0) + 1

        # Keep writing while the backup runs: it must not wait for a quiet database.
        stop_writer = threading.Event()
        writes = [0]

        def writer():
            w = sqlite3.connect(db_path, timeout=30)
            while not stop_writer.is_set():
                with w:
                    w.execute("INSERT OR REPLACE INTO job_events (job_id, seq, proto) VALUES (?, ?, ?)",
                              ("ftjob-backup0000", writes[0] % 50 + 1, padded_event()))
                writes[0] += 1
            w.close()

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.2)
        backup = os.path.join(scratch, "backup", "scheduler-backup.db")
        os.makedirs(os.path.dirname(backup))
        started = time.time()
        run = subprocess.run([args.script, "backup", "--db", db_path, "--out", backup],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        took = time.time() - started
        time.sleep(0.2)
        stop_writer.set()
        t.join()
        stop(proc)
        print(run.stdout.strip())
        if run.returncode != 0:
            print("FAIL: backup exited %d" % run.returncode)
            return 1
        print("backup took %.2fs while %d writes went to the live database" % (took, writes[0]))
        if writes[0] == 0:
            print("FAIL: the writer made no progress during the backup")
            return 1

        # Refuses to overwrite, refuses to restore over a database without --force.
        again = subprocess.run([args.script, "backup", "--db", db_path, "--out", backup],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if again.returncode == 0:
            print("FAIL: backup overwrote an existing file")
            return 1
        over = subprocess.run([args.script, "restore", "--in", backup, "--data-dir", live],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if over.returncode == 0:
            print("FAIL: restore replaced a database without --force")
            return 1

        restored = os.path.join(scratch, "restored")
        run = subprocess.run([args.script, "restore", "--in", backup, "--data-dir", restored],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        print(run.stdout.strip())
        if run.returncode != 0:
            print("FAIL: restore exited %d" % run.returncode)
            return 1
        proc, metrics_port = start_scheduler(binary, restored, scratch, "restored")
        try:
            got = {}
            deadline = time.time() + 15
            while time.time() < deadline:
                got = {k: v for k, v in jobs_by_state(metrics_port).items() if v}
                if got == expected:
                    break
                time.sleep(0.1)
        finally:
            stop(proc)
        if got != expected:
            print("FAIL: the scheduler on the restored copy reports jobs %s, expected %s" % (got, expected))
            return 1
        print("ok: the scheduler on the restored copy reports all %d jobs %s" % (JOBS, got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
