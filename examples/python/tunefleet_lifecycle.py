#!/usr/bin/env python3
"""The Tunefleet lifecycle from Python, through the stubs the build generates.

Uploads a chat JSONL file (client streaming), waits for its validation,
creates a LoRA fine-tuning job, follows the job's events to the end, deploys
the fine-tuned model, chats with it (token streaming), and provokes and reads
structured errors: a bad hyperparameter (INVALID_ARGUMENT naming the field),
an unknown job id (NOT_FOUND), and a prompt the content filter blocks
(INVALID_ARGUMENT, reason PROMPT_BLOCKED, with the filter results among the
google.rpc details in `grpc-status-details-bin`; tunefleet_errors.py reads them).

Every step is checked; the script exits non-zero at the first one that does
not hold, so it doubles as a test (tests/clients/run_clients.py).

Needs grpcio and protobuf (Debian: python3-grpcio, python3-protobuf) and the
generated stubs (the build writes them to build/python). See README.md.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _add_stubs_to_path(argv):
    """The stubs' directory: --stubs, TUNEFLEET_PYTHON_STUBS, or build/python."""
    stubs = os.environ.get("TUNEFLEET_PYTHON_STUBS", os.path.join(ROOT, "build", "python"))
    for i, arg in enumerate(argv):
        if arg == "--stubs" and i + 1 < len(argv):
            stubs = argv[i + 1]
        elif arg.startswith("--stubs="):
            stubs = arg.split("=", 1)[1]
    if not os.path.isdir(os.path.join(stubs, "tunefleet", "v1")):
        sys.exit("no generated stubs under %s: build the target tunefleet_python_stubs, "
                 "or pass --stubs DIR (or set TUNEFLEET_PYTHON_STUBS)" % stubs)
    sys.path.insert(0, stubs)


_add_stubs_to_path(sys.argv)

import grpc  # noqa: E402

from tunefleet.v1 import common_pb2  # noqa: E402
from tunefleet.v1 import deployments_pb2, deployments_pb2_grpc  # noqa: E402
from tunefleet.v1 import files_pb2, files_pb2_grpc  # noqa: E402
from tunefleet.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
from tunefleet.v1 import jobs_pb2, jobs_pb2_grpc  # noqa: E402
from tunefleet.v1 import models_pb2, models_pb2_grpc  # noqa: E402
from tunefleet_errors import error_details  # noqa: E402

CHUNK = 64 * 1024
SYSTEM = ("You are Lumo Support, the assistant for the Lumo smart lamp by Aurora Home. "
          "Answer briefly.")
QUESTION = "How do I reset my Lumo?"
BLOCKED_PROMPT = "This shit lamp is broken"


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed("expected: " + what)
    print("  ok: " + what, flush=True)


def step(title):
    print("\n== " + title, flush=True)


def describe_error(err):
    """Prints an RpcError's code, message and structured details; returns them."""
    print("  error: %s: %s" % (err.code().name, err.details()), flush=True)
    details = error_details(err)
    print("  reason %s (domain %s)" % (details.reason, details.domain))
    for line in details.lines()[1:]:
        print("    " + line)
    if details.prompt_filter is not None:
        for r in details.prompt_filter.prompt_filter_results:
            print("    prompt %s severity=%s filtered=%s" % (
                common_pb2.ContentFilterCategory.Name(r.category),
                common_pb2.Severity.Name(r.severity), r.filtered))
        for f in details.prompt_filter.prompt_filter_findings:
            print("    prompt finding %s/%s filtered=%s" % (f.filter, f.kind, f.filtered))
    return details


def expect_error(call, code, what):
    """Runs call(); it must fail with `code`. Returns the RpcError."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            for _ in result:  # a server stream fails while it is read
                pass
    except grpc.RpcError as err:
        describe_error(err)
        check(err.code() == code, "%s fails with %s" % (what, code.name))
        return err
    raise CheckFailed("%s succeeded; expected %s" % (what, code.name))


# --- connection settings ------------------------------------------------------

def resolve(args):
    """Addresses and key: flags, then TUNEFLEET_* variables, then --fleet DIR."""
    fleet = creds = {}
    if args.fleet:
        with open(os.path.join(args.fleet, "fleet.json")) as f:
            fleet = json.load(f).get("services", {})
        with open(os.path.join(args.fleet, "credentials.json")) as f:
            creds = json.load(f)
    out = {}
    for service in ("dataset", "scheduler", "serving"):
        out[service] = (getattr(args, service) or os.environ.get("TUNEFLEET_" + service.upper())
                        or fleet.get(service, {}).get("address"))
        if not out[service]:
            sys.exit("no address for the %s service: pass --%s, set TUNEFLEET_%s, or --fleet DIR"
                     % (service, service, service.upper()))
    out["key"] = args.api_key or os.environ.get("TUNEFLEET_API_KEY") or creds.get("tenant_key")
    if not out["key"]:
        sys.exit("no API key: pass --api-key, set TUNEFLEET_API_KEY, or --fleet DIR")
    return out


def channel(address, tls_ca):
    options = [("grpc.keepalive_time_ms", 30000), ("grpc.max_receive_message_length", 64 << 20)]
    if tls_ca:
        with open(tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


# --- the lifecycle ------------------------------------------------------------

class Lifecycle:
    def __init__(self, args, conn):
        self.args = args
        self.md = (("authorization", "Bearer " + conn["key"]),)
        self.channels = [channel(conn[s], args.tls_ca) for s in ("dataset", "scheduler", "serving")]
        dataset, scheduler, serving = self.channels
        self.files = files_pb2_grpc.DatasetServiceStub(dataset)
        self.jobs = jobs_pb2_grpc.JobServiceStub(scheduler)
        self.models = models_pb2_grpc.ModelServiceStub(scheduler)
        self.deployments = deployments_pb2_grpc.DeploymentServiceStub(scheduler)
        self.inference = inference_pb2_grpc.InferenceServiceStub(serving)
        self.deployment_id = None

    def close(self):
        if self.deployment_id and not self.args.keep:
            try:
                self.deployments.DeleteDeployment(deployments_pb2.DeleteDeploymentRequest(
                    deployment_id=self.deployment_id), metadata=self.md, timeout=10)
                print("\ndeleted " + self.deployment_id)
            except grpc.RpcError as err:
                print("\ncould not delete %s: %s" % (self.deployment_id, err.details()))
        for c in self.channels:
            c.close()

    def upload(self):
        step("1. upload %s (client streaming)" % self.args.file)
        with open(self.args.file, "rb") as f:
            content = f.read()

        def requests():
            yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileRequest.Metadata(
                filename=os.path.basename(self.args.file), purpose=files_pb2.FILE_PURPOSE_FINE_TUNE,
                expected_bytes=len(content), expected_sha256=hashlib.sha256(content).hexdigest()))
            for pos in range(0, len(content), CHUNK):
                yield files_pb2.UploadFileRequest(chunk=content[pos:pos + CHUNK])

        f = self.files.UploadFile(requests(), metadata=self.md, timeout=60)
        print("  %s: %d bytes, sha256 %s" % (f.id, f.bytes, f.sha256[:16]))
        check(f.id.startswith("file-") and f.bytes == len(content), "uploaded as " + f.id)
        return f.id

    def wait_validated(self, file_id, base):
        step("2. wait for validation")
        deadline = time.monotonic() + 180
        while True:
            f = self.files.GetFile(files_pb2.GetFileRequest(file_id=file_id), metadata=self.md,
                                   timeout=10)
            if f.status in (files_pb2.FILE_STATUS_PROCESSED, files_pb2.FILE_STATUS_ERROR):
                break
            if time.monotonic() > deadline:
                raise CheckFailed("%s still %s after 180 s" % (
                    file_id, files_pb2.FileStatus.Name(f.status)))
            time.sleep(0.25)
        print("  status %s %s" % (files_pb2.FileStatus.Name(f.status), f.status_details))
        check(f.status == files_pb2.FILE_STATUS_PROCESSED, file_id + " is processed")
        # Token counts need the base model's tokenizer: validate against it.
        report = self.files.ValidateFile(files_pb2.ValidateFileRequest(
            file_id=file_id, base_model=base, epochs=self.args.epochs), metadata=self.md,
            timeout=60)
        s = report.statistics
        print("  %d examples, %d tokens (%d trained) with %s's tokenizer; %d trained tokens for "
              "%d epochs" % (s.examples, s.total_tokens, s.trained_tokens, base,
                             report.estimated_trained_tokens, report.epochs))
        check(report.valid and s.examples > 0, "%s is valid for %s" % (file_id, base))

    def base_model(self):
        if self.args.base_model:
            return self.args.base_model
        listed = self.models.ListModels(models_pb2.ListModelsRequest(page_size=100),
                                        metadata=self.md, timeout=10)
        bases = [m.id for m in listed.models if m.kind == models_pb2.MODEL_KIND_BASE]
        if not bases:
            raise CheckFailed("the fleet has no base model (pass --base-model)")
        return bases[0]

    def job_request(self, file_id, base):
        a = self.args
        return jobs_pb2.CreateJobRequest(
            base_model=base, training_file=file_id, validation_split=0.1,
            adapter=jobs_pb2.ADAPTER_TYPE_LORA, suffix=a.suffix,
            request_id="py-" + uuid.uuid4().hex,
            hyperparameters=jobs_pb2.Hyperparameters(
                epochs=a.epochs, batch_size=8, learning_rate_multiplier=50, lora_rank=16,
                lora_alpha=32, lora_dropout=0, seed=7))

    def structured_errors(self, file_id, base):
        step("3. structured errors: a bad hyperparameter, an unknown job")
        bad = self.job_request(file_id, base)
        bad.hyperparameters.epochs = -1
        err = expect_error(lambda: self.jobs.CreateJob(bad, metadata=self.md, timeout=10),
                           grpc.StatusCode.INVALID_ARGUMENT, "CreateJob with epochs -1")
        check("hyperparameters.epochs" in err.details(), "the message names hyperparameters.epochs")
        details = error_details(err)
        check(details.reason == "INVALID_FIELD" and details.domain == "tunefleet.dev",
              "ErrorInfo reason INVALID_FIELD in domain tunefleet.dev")
        check(any(f == "hyperparameters.epochs" for f, _ in details.field_violations),
              "a BadRequest field violation on hyperparameters.epochs")
        unknown = "ftjob-doesnotexist"
        err = expect_error(lambda: self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=unknown),
                                                    metadata=self.md, timeout=10),
                           grpc.StatusCode.NOT_FOUND, "GetJob of " + unknown)
        check(unknown in err.details(), "the message names " + unknown)
        check(error_details(err).reason == "NOT_FOUND", "ErrorInfo reason NOT_FOUND")

    def train(self, file_id, base):
        step("4. fine-tune %s: LoRA r=16 alpha=32, %d epochs, batch 8, 10%% validation split"
             % (base, self.args.epochs))
        job = self.jobs.CreateJob(self.job_request(file_id, base), metadata=self.md, timeout=30)
        print("  created %s (%s)" % (job.id, jobs_pb2.JobState.Name(job.state)))
        err = expect_error(lambda: self.files.DeleteFile(
            files_pb2.DeleteFileRequest(file_id=job.training_file), metadata=self.md, timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION, "deleting the job's training file")
        details = error_details(err)
        check(details.reason == "FILE_IN_USE" and
              ("FILE_HELD", job.id) in [(t, s) for t, s, _ in details.precondition_violations],
              "reason FILE_IN_USE; a PreconditionFailure names %s as the holder" % job.id)
        step("5. follow %s (StreamJobEvents)" % job.id)
        final = None
        events = self.jobs.StreamJobEvents(jobs_pb2.StreamJobEventsRequest(job_id=job.id),
                                           metadata=self.md, timeout=self.args.job_timeout)
        for e in events:
            kind = e.WhichOneof("payload")
            if kind == "state":
                print("  [%d] state %s %s" % (e.sequence, jobs_pb2.JobState.Name(e.state),
                                              e.message), flush=True)
                if e.state in (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED,
                               jobs_pb2.JOB_STATE_CANCELLED):
                    final = e.state
                    events.cancel()
                    break
            elif kind == "metrics":
                m = e.metrics
                valid = " valid_loss %.4f" % m.valid_loss if m.HasField("valid_loss") else ""
                print("  [%d] step %d epoch %.2f loss %.4f%s acc %.3f %.0f tok/s" % (
                    e.sequence, m.step, m.epoch, m.train_loss, valid, m.train_token_accuracy,
                    m.tokens_per_second), flush=True)
            elif kind == "checkpoint_id":
                print("  [%d] checkpoint %s" % (e.sequence, e.checkpoint_id), flush=True)
            elif e.message:
                print("  [%d] %s" % (e.sequence, e.message), flush=True)
        job = self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=self.md,
                               timeout=10)
        if job.error.message:
            print("  job error: %s: %s" % (job.error.code, job.error.message))
        check(final == jobs_pb2.JOB_STATE_SUCCEEDED and job.state == jobs_pb2.JOB_STATE_SUCCEEDED,
              "%s succeeded" % job.id)
        ev = job.evaluation
        if ev.HasField("valid_loss") and ev.HasField("base_valid_loss"):
            print("  validation loss: base %.4f, fine-tuned %.4f" % (ev.base_valid_loss,
                                                                     ev.valid_loss))
        check(job.result_model.startswith("ft:"), "result model " + job.result_model)
        return job.result_model

    def deploy(self, model):
        step("6. deploy %s" % model)
        dep = self.deployments.CreateDeployment(
            deployments_pb2.CreateDeploymentRequest(model=model, replicas=1), metadata=self.md,
            timeout=30)
        self.deployment_id = dep.id
        print("  created %s (%s)" % (dep.id, deployments_pb2.DeploymentState.Name(dep.state)))
        # WatchDeployment sends the deployment now, then each change, and
        # ends once it is ACTIVE, FAILED or deleted.
        try:
            for dep in self.deployments.WatchDeployment(
                    deployments_pb2.WatchDeploymentRequest(deployment_id=dep.id),
                    metadata=self.md, timeout=180):
                print("  %s (%d/%d ready)" % (deployments_pb2.DeploymentState.Name(dep.state),
                                               dep.ready_replicas, dep.replicas))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        if dep.state == deployments_pb2.DEPLOYMENT_STATE_FAILED:
            raise CheckFailed("%s failed: %s" % (dep.id, dep.error.message))
        if dep.state != deployments_pb2.DEPLOYMENT_STATE_ACTIVE:
            raise CheckFailed("%s still %s after 180 s" % (
                dep.id, deployments_pb2.DeploymentState.Name(dep.state)))
        check(True, "%s is serving (%d ready replica(s))" % (dep.id, dep.ready_replicas))
        return dep.id

    def chat_request(self, dep_id, text):
        return inference_pb2.ChatCompletionRequest(
            deployment=dep_id, temperature=0, max_tokens=48,
            messages=[common_pb2.ChatMessage(role="system", content=SYSTEM),
                      common_pb2.ChatMessage(role="user", content=text)])

    def chat(self, dep_id):
        step("7. chat (StreamChatCompletion)")
        print("  user: " + QUESTION)
        print("  assistant: ", end="", flush=True)
        text, last = "", None
        # A new replica may learn of the deployment a moment after the
        # scheduler reports it serving: retry while it says UNAVAILABLE /
        # NOT_FOUND / FAILED_PRECONDITION, for a few seconds.
        deadline = time.monotonic() + 30
        while True:
            try:
                for chunk in self.inference.StreamChatCompletion(
                        self.chat_request(dep_id, QUESTION), metadata=self.md, timeout=120):
                    if chunk.delta:
                        text += chunk.delta
                        print(chunk.delta, end="", flush=True)
                    if chunk.finish_reason:
                        last = chunk
                break
            except grpc.RpcError as err:
                retry = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                       grpc.StatusCode.FAILED_PRECONDITION)
                if text or not retry or time.monotonic() > deadline:
                    print()
                    describe_error(err)
                    raise CheckFailed("the chat failed")
                time.sleep(0.25)
        print()
        check(last is not None, "the stream ended with finish_reason %s, usage %d+%d tokens" % (
            inference_pb2.FinishReason.Name(last.finish_reason) if last else "-",
            last.usage.prompt_tokens if last else 0, last.usage.completion_tokens if last else 0))

    def blocked(self, dep_id):
        step("8. a prompt the content filter blocks")
        print("  user: " + BLOCKED_PROMPT)
        err = expect_error(lambda: self.inference.StreamChatCompletion(
            self.chat_request(dep_id, BLOCKED_PROMPT), metadata=self.md, timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT, "the profane prompt")
        details = error_details(err)
        check(details.reason == "PROMPT_BLOCKED" and details.metadata.get("deployment") == dep_id,
              "ErrorInfo reason PROMPT_BLOCKED naming the deployment")
        check(details.prompt_filter is not None and
              any(r.filtered and r.category == common_pb2.CONTENT_FILTER_CATEGORY_PROFANITY
                  for r in details.prompt_filter.prompt_filter_results),
              "the status details name the profanity category as filtered")

    def run(self):
        file_id = self.upload()
        base = self.base_model()
        self.wait_validated(file_id, base)
        self.structured_errors(file_id, base)
        model = self.train(file_id, base)
        dep_id = self.deploy(model)
        self.chat(dep_id)
        self.blocked(dep_id)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", help="a 'tunefleet local' data dir (fleet.json, credentials.json)")
    ap.add_argument("--dataset", help="dataset host:port (or TUNEFLEET_DATASET)")
    ap.add_argument("--scheduler", help="scheduler host:port (or TUNEFLEET_SCHEDULER)")
    ap.add_argument("--serving", help="serving host:port (or TUNEFLEET_SERVING)")
    ap.add_argument("--api-key", help="tenant API key (or TUNEFLEET_API_KEY)")
    ap.add_argument("--tls-ca", help="CA certificate of the servers (enables TLS)")
    ap.add_argument("--stubs", help="generated stubs (default build/python)")
    ap.add_argument("--file", default=os.path.join(ROOT, "examples", "data", "support_chat.jsonl"))
    ap.add_argument("--base-model", help="default: the fleet's first base model")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--suffix", default="python")
    ap.add_argument("--job-timeout", type=float, default=480, help="seconds to follow the job")
    ap.add_argument("--keep", action="store_true", help="leave the deployment in place")
    args = ap.parse_args()
    life = Lifecycle(args, resolve(args))
    try:
        life.run()
    except CheckFailed as e:
        print("FAILED: %s" % e, file=sys.stderr, flush=True)
        return 1
    except grpc.RpcError as err:
        print("FAILED: an unexpected RPC error", file=sys.stderr, flush=True)
        describe_error(err)
        return 1
    finally:
        life.close()
    print("\nthe Python client ran the whole lifecycle", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
