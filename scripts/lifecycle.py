#!/usr/bin/env python3
"""The whole Tunefleet lifecycle on one machine, through the tunefleet CLI.

Used by scripts/demo (for people: each phase printed with its time) and by
the end-to-end CTest (`--check`: every step's outcome is asserted, and the
script exits non-zero at the first that does not hold).

Phases: a tiny Phi-3 base model; `tunefleet local up`; upload and validate
the customer-support data set; a LoRA job with an automatic validation
split, followed to the end; the loss chart (SVG); base vs fine-tuned
validation loss; a deployment with content filtering; learned answers; a
blocked prompt and a blocked answer; usage and cost (the job's estimate and
cost, the deployment's requests and tokens, priced by a price table); delete
refused while deployed; delete the deployment and the model; `tunefleet
local down`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Demo:
    def __init__(self, args):
        self.bin = args.bin_dir
        self.data = os.path.abspath(args.data_dir)
        self.check = args.check
        self.phase_start = time.monotonic()
        self.t0 = time.monotonic()
        self.timings = []
        self.env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")

    # --- helpers ----------------------------------------------------------
    def phase(self, name):
        now = time.monotonic()
        if self.timings or hasattr(self, "current"):
            self.timings.append((self.current, now - self.phase_start))
        self.current = name
        self.phase_start = now
        print(f"\n=== {name}", flush=True)

    def cli(self, *args, ok=True, show=True):
        cmd = [os.path.join(self.bin, "tunefleet"), *args]
        if args and args[0] not in ("local",):
            cmd += ["--fleet", self.data]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if show:
            print("$ tunefleet " + " ".join(args))
            if p.stdout.strip():
                print(p.stdout.rstrip())
            if p.stderr.strip():
                print(p.stderr.rstrip())
        if ok and p.returncode != 0:
            self.fail(f"'tunefleet {' '.join(args)}' exited {p.returncode}: {p.stderr.strip()}")
        return p

    def cli_json(self, *args):
        p = self.cli(*args, "--json", show=False)
        return json.loads(p.stdout)

    def expect(self, cond, what):
        if cond:
            print(f"  ok: {what}")
        else:
            self.fail(what)

    def fail(self, what):
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
        for log in sorted(os.listdir(os.path.join(self.data, "logs"))) if os.path.isdir(
                os.path.join(self.data, "logs")) else []:
            path = os.path.join(self.data, "logs", log)
            with open(path, errors="replace") as f:
                tail = f.readlines()[-25:]
            print(f"--- end of {path}", file=sys.stderr)
            sys.stderr.writelines(tail)
        raise SystemExit(1)

    # --- the flow ----------------------------------------------------------
    def run(self):
        if os.path.exists(self.data):
            if os.path.exists(os.path.join(self.data, "fleet.json")):
                self.cli("local", "down", "--data-dir", self.data, ok=False, show=False)
            shutil.rmtree(self.data)
        models = os.path.join(self.data, "models")
        self.phase("1. a tiny Phi-3 base model (the real Phi-3 tokenizer, seeded random weights)")
        subprocess.run([os.path.join(self.bin, "tunefleet-model"), "init-tiny", "--out",
                        os.path.join(models, "phi-3-tiny"), "--seed", "1", "--hidden", "256",
                        "--intermediate", "512", "--layers", "4", "--lm_head_scale", "40"],
                       check=True, stdout=subprocess.DEVNULL, env=self.env)
        print(f"  wrote {models}/phi-3-tiny")

        self.phase("2. start the fleet: dataset, scheduler, trainer agent, serving replica")
        # The replica's blocklist: a discontinued offer no answer may make.
        self.blocklist = os.path.join(self.data, "blocklist.txt")
        with open(self.blocklist, "w", encoding="utf-8") as f:
            f.write("two-pack\npack de dos\n")
        # The platform team's price table: what `tunefleet usage` charges back.
        self.price_table = os.path.join(self.data, "prices.json")
        with open(self.price_table, "w", encoding="utf-8") as f:
            json.dump({"phi-3-tiny": PRICES}, f, indent=2)
        self.cli("local", "up", "--data-dir", self.data, "--models-dir", models,
                 "--blocklist-file", self.blocklist, "--price-table", self.price_table)
        try:
            self.lifecycle()
        finally:
            self.phase("stop the fleet")
            self.cli("local", "down", "--data-dir", self.data, ok=False)
        self.phase("done")
        print("\nphase timings:")
        for name, secs in self.timings[:-1]:
            print(f"  {secs:7.1f} s  {name}")
        print(f"  {time.monotonic() - self.t0:7.1f} s  in all")

    def lifecycle(self):
        data_file = os.path.join(ROOT, "examples", "data", "support_chat.jsonl")
        self.phase("3. upload and validate the training data")
        up = self.cli_json("files", "upload", data_file)
        file_id = up["id"]
        print(f"  uploaded {data_file} as {file_id}")
        deadline = time.monotonic() + 120
        while True:
            f = self.cli_json("files", "get", file_id)
            if f.get("status") in ("FILE_STATUS_PROCESSED", "FILE_STATUS_ERROR"):
                break
            if time.monotonic() > deadline:
                self.fail(f"{file_id} still validating after 120 s")
            time.sleep(0.2)
        self.expect(f["status"] == "FILE_STATUS_PROCESSED", f"{file_id} is processed")
        report = self.cli("files", "validate", file_id, "--base-model", "phi-3-tiny",
                          "--epochs", str(EPOCHS))
        stats = json.loads(self.cli("files", "validate", file_id, "--base-model", "phi-3-tiny",
                                    "--epochs", str(EPOCHS), "--json", show=False).stdout)
        self.expect(stats.get("valid") is True, "the file is valid")
        self.expect(int(stats["statistics"]["examples"]) == 240, "240 examples counted")
        self.expect(int(stats.get("estimated_trained_tokens", 0)) > 0,
                    f"trained-token estimate {stats.get('estimated_trained_tokens')} "
                    f"for {EPOCHS} epochs")

        self.phase("4. fine-tune: LoRA, automatic 10% validation split, followed to the end")
        job = self.cli_json("jobs", "create", "--model", "phi-3-tiny", "--training-file", file_id,
                            "--validation-split", "0.1", "--epochs", str(EPOCHS),
                            "--batch-size", "4", "--learning-rate-multiplier", str(LR_MULT),
                            "--lora-rank", "16", "--lora-alpha", "32", "--lora-dropout", "0",
                            "--seed", "7", "--suffix", "support")
        job_id = job["id"]
        print(f"  created {job_id}")
        follow = self.cli("jobs", "events", job_id, "--follow", ok=False)
        self.expect(follow.returncode == 0, f"{job_id} followed to its end")
        job = self.cli_json("jobs", "get", job_id)
        self.cli("jobs", "get", job_id)
        self.expect(job["state"] == "JOB_STATE_SUCCEEDED", f"{job_id} succeeded")
        model = job.get("result_model", "")
        self.expect(model.startswith("ft:phi-3-tiny:support:"), f"model {model} registered")
        models = self.cli("models", "list").stdout
        self.expect(model in models, "the model is listed")

        self.phase("5. the loss chart and what fine-tuning bought")
        chart = os.path.join(self.data, "loss.svg")
        self.cli("jobs", "metrics", job_id, "--plot", chart, show=False)
        root = ET.parse(chart).getroot()
        ns = "{http://www.w3.org/2000/svg}"
        self.expect(root.tag == ns + "svg" and len(root.findall(ns + "polyline")) >= 2,
                    f"{chart} is a well-formed SVG with train and validation curves")
        ev = job.get("evaluation", {})
        base, tuned = ev.get("base_valid_loss"), ev.get("valid_loss")
        self.expect(base is not None and tuned is not None and tuned < base,
                    f"validation loss: base {base}, fine-tuned {tuned}")

        self.phase("6. restart the fleet: nothing is lost")
        self.cli("local", "down", "--data-dir", self.data)
        self.cli("local", "up", "--data-dir", self.data, "--models-dir",
                 os.path.join(self.data, "models"), "--blocklist-file", self.blocklist,
                 "--price-table", self.price_table)
        again = self.cli_json("jobs", "get", job_id)
        self.expect(again["state"] == "JOB_STATE_SUCCEEDED" and again.get("result_model") == model,
                    f"{job_id} is still succeeded with {model}")
        self.expect(model in self.cli("models", "list", show=False).stdout,
                    "the model is still registered")
        self.expect(self.cli_json("files", "get", file_id)["status"] == "FILE_STATUS_PROCESSED",
                    f"{file_id} is still there")

        self.phase("7. deploy the fine-tuned model with content filtering (PII, profanity, blocklist)")
        dep = self.cli_json("deployments", "create", "--model", model, "--wait")
        dep_id = dep["id"]
        self.expect(dep["state"] == "DEPLOYMENT_STATE_ACTIVE", f"{dep_id} is serving")

        self.phase("8. ask it questions from the training set")
        # Questions the job really trained on: the first examples of its
        # training file (the automatic split chose which ones).
        train_copy = os.path.join(self.data, "training.jsonl")
        self.cli("files", "download", job["training_file"], "--output", train_copy, show=False)
        with open(train_copy, encoding="utf-8") as f:
            conversations = [json.loads(line)["messages"] for line in f]
        answers = {m[-1]["content"] for m in conversations}
        # Answers the filters would cut (the two-pack offer, the support
        # e-mail and phone) are shown in phase 9; ask about the others here.
        blocked_text = ("two-pack", "pack de dos", "help@aurora.example", "555 0100")
        examples = [m for m in conversations
                    if not any(t in m[-1]["content"] for t in blocked_text)][:8]
        right = verbatim = answered = 0
        for m in examples:
            p = self.cli("chat", "--deployment", dep_id, "--system", m[0]["content"],
                         "--message", m[1]["content"], ok=False)
            answer = p.stdout.strip() if p.returncode == 0 else None
            answered += p.returncode == 0
            right += answer == m[2]["content"]
            verbatim += answer in answers
        # The base model's weights are random: every fluent sentence was
        # learned. A model this small, trained for two minutes on a CPU from
        # random weights, learns the answers well before it learns to tell
        # every phrasing of a question apart (chance is 1 in 24).
        self.expect(verbatim * 4 >= len(examples) * 3,
                    f"{verbatim} of {len(examples)} answers are trained answers word for word")
        self.expect(right >= 2,
                    f"{right} of {len(examples)} are the trained answer to their question")

        self.phase("9. the content filter: a blocked prompt, a blocked answer")
        p = self.cli("chat", "--deployment", dep_id, "--message",
                     "This shit lamp is broken, fix it", ok=False)
        self.expect(p.returncode == 4 and "content filter" in p.stderr,
                    "a profane prompt is refused before the model runs (exit 4)")
        # The blocklist names the two-pack, which the price answers offer; the
        # e-mail and phone of the contact answers are personal data. Either
        # cuts an answer: finish_reason content_filter, nothing of it shown.
        blocked = leaked = 0
        for system, q in ((SYSTEM_EN, "How much does Lumo cost?"),
                          (SYSTEM_ES, "¿Cuánto cuesta Lumo?"),
                          (SYSTEM_ES, "¿Hay un pack de dos?"),
                          (SYSTEM_EN, "How do I contact support?"),
                          (SYSTEM_ES, "¿Cómo contacto con soporte?")):
            p = self.cli("chat", "--deployment", dep_id, "--system", system, "--message", q,
                         ok=False)
            blocked += p.returncode == 0 and "content_filter" in p.stderr
            answered += p.returncode == 0  # a blocked prompt never reaches the model
            leaked += any(t in p.stdout for t in ("two-pack", "pack de dos", "help@aurora.example",
                                                  "555 0100"))
        self.expect(blocked >= 1 and leaked == 0,
                    f"{blocked} of 5 answers were cut by the filters (finish_reason "
                    "content_filter) and no blocked text reached the client")

        self.phase("10. usage and cost: the job's estimate and cost, the deployment's tokens")
        # The replica reports what it served every few seconds; wait for the
        # chats the model answered above (a blocked prompt is not a model
        # call) to be counted.
        served = answered
        deadline = time.monotonic() + 60
        while True:
            usage = self.cli_json("usage", "--since", "2h")
            totals = usage.get("totals", {})
            if int(totals.get("requests", 0)) >= served or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.cli("usage", "--since", "2h")
        jobs = {j["job_id"]: j for j in usage.get("jobs", [])}
        j = jobs.get(job_id, {})
        self.expect(int(j.get("trained_tokens", 0)) > 0 and j.get("accelerator_seconds", 0) > 0,
                    f"{job_id}: {j.get('trained_tokens')} trained tokens, "
                    f"{j.get('accelerator_seconds')} accelerator-seconds")
        est, cost = j.get("estimated_cost", {}), j.get("job_cost", {})
        self.expect(est.get("currency") == "USD" and est.get("amount", 0) > 0 and
                    cost.get("amount", 0) > 0,
                    f"{job_id}: estimated {est.get('amount')} USD before the run, "
                    f"cost {cost.get('amount')} USD after it")
        deps = {d["deployment_id"]: d for d in usage.get("deployments", [])}
        d = deps.get(dep_id, {})
        self.expect(int(d.get("requests", 0)) >= served and
                    int(d.get("completion_tokens", 0)) > 0 and d.get("replica_hours", 0) > 0,
                    f"{dep_id}: {d.get('requests')} requests, {d.get('prompt_tokens')} prompt + "
                    f"{d.get('completion_tokens')} completion tokens, "
                    f"{d.get('replica_hours')} replica-hours")
        self.expect(any(c.get("currency") == "USD" and c.get("amount", 0) > 0
                        for c in totals.get("costs", [])),
                    f"total cost {totals.get('costs')}")

        self.phase("11. delete: refused while deployed, then the deployment and the model")
        p = self.cli("models", "delete", model, ok=False)
        self.expect(p.returncode == 4 and dep_id in p.stderr,
                    f"deleting {model} is refused while {dep_id} serves it")
        self.cli("deployments", "delete", dep_id)
        deadline = time.monotonic() + 60
        while True:
            p = self.cli("models", "delete", model, ok=False, show=False)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.expect(p.returncode == 0, f"{model} deleted")
        print(f"\nthe loss chart: {chart}\nthe logs: {self.data}/logs/")


# Illustrative prices (per base model; see services/scheduler/usage.h).
PRICES = {"currency": "USD", "per_1m_trained_tokens": 4.0, "per_accelerator_hour": 2.5,
          "per_replica_hour": 1.2, "per_1m_prompt_tokens": 0.2,
          "per_1m_completion_tokens": 0.6}
EPOCHS = 10
LR_MULT = 25  # x the LoRA base rate 2e-4: a tiny model learns fast
SYSTEM_EN = ("You are Lumo Support, the assistant for the Lumo smart lamp by Aurora Home. "
             "Answer briefly.")
SYSTEM_ES = ("Eres Lumo Soporte, el asistente de la lámpara inteligente Lumo de Aurora Home. "
             "Responde brevemente.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--check", action="store_true", help="assert every step (for CTest)")
    Demo(ap.parse_args()).run()


if __name__ == "__main__":
    main()
