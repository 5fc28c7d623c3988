// What the worker tests share (worker_test, dpo_test, classify_test): the
// tiny Phi-3 they train (with the real Phi-3 tokenizer), and a real
// tunefleet-train-worker process run on a spec, its report lines collected
// from the pipe the agent would read.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/text/chat_template.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/worker_spec.h"

namespace tunefleet::trainer::worker_testing {

struct RunResult {
  int exit_code = -1;  // or 128 + signal
  std::vector<ReportEvent> events;
  std::string stderr_tail;

  const ReportEvent* Last(ReportKind k) const;
  std::vector<const ReportEvent*> All(ReportKind k) const;
  // step -> train loss, from progress events.
  std::map<int64_t, double> Losses() const;
};

// Writes the tests' tiny Phi-3 (2 layers, hidden 64, 4 heads, seed 3) with
// the Phi-3 tokenizer files into `dir` and loads its chat tokenizer.
// `lm_head_scale` 40 gives the head a trained model's size (the tiny
// model's std-0.02 head keeps logits within about +-1, where no adapter
// could make the model confident).
absl::StatusOr<std::unique_ptr<text::ChatTokenizer>> WriteTinyPhi3(const std::string& dir,
                                                                    double lm_head_scale);

// Called with each report event; a nonzero return is a signal sent to the
// worker (once).
using OnEvent = std::function<int(const ReportEvent&)>;

// Runs tunefleet-train-worker on `spec` (written to <run_dir>/<name>.spec.json,
// its stderr to <run_dir>/<name>.stderr) until it exits. `child_pid`
// (optional) receives the worker's pid while it runs.
RunResult RunWorker(const WorkerSpec& spec, const std::string& run_dir, const std::string& name,
                    OnEvent on_event = nullptr, std::atomic<pid_t>* child_pid = nullptr);
RunResult RunWorkerWithSpecFile(const std::string& spec_path, const std::string& run_dir,
                                const std::string& name, OnEvent on_event = nullptr,
                                std::atomic<pid_t>* child_pid = nullptr);

std::string ReadBytes(const std::string& path);

// A loopback TCP port free a moment ago (for a rendezvous).
int FreePort();

// Two Gloo ranks on loopback from `base`: rank r trains on train_parts[r]
// (and validates on valid_parts[r] when given), results under
// <run_dir>/ddp/; each rank's run as RunWorker's (logs "rank0", "rank1").
std::vector<RunResult> RunTwoRanks(WorkerSpec base, const std::vector<std::string>& train_parts,
                                   const std::vector<std::string>& valid_parts,
                                   const std::string& run_dir);

}  // namespace tunefleet::trainer::worker_testing
