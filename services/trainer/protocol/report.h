// The worker -> agent report channel: one JSON object per line on an
// inherited file descriptor (`--report_fd`). The format (stable; the agent
// parses it, other tools may too):
//   {"event":"started","total_steps":N,"world_size":W,"rank":R,"resumed_step":S}
//   {"event":"progress","step":..,"total_steps":..,"epoch":..,"train_loss":..,
//    "train_token_accuracy":..,"learning_rate":..,"tokens_per_second":..,
//    "trained_tokens":..,"eta_seconds":..[,"metrics":{..}]}
//   {"event":"eval","step":..,"epoch":..,"valid_loss":..,"valid_token_accuracy":..
//    [,"metrics":{..}]}
//   {"event":"checkpoint","step":..,"epoch":..,"dir":"<abs path>","metrics":{"train_loss":..}}
//   {"event":"completed","result_dir":"<abs path>","trained_tokens":..,
//    "valid_loss":..,"base_valid_loss":..,"metrics":{..}[,"stopped_early":true]}
// DPO runs (objective "dpo") use the same fields: train_loss / valid_loss
// are the DPO loss, train_token_accuracy / valid_token_accuracy the reward
// accuracy (share of pairs whose chosen reward exceeds the rejected one),
// and progress and eval carry "metrics": {"reward_margin", "chosen_reward",
// "rejected_reward"} (means over the pairs). Progress and eval lines have
// "metrics" only when there is something in it, so SFT lines are unchanged.
// Classification: the losses are cross-entropy, the token accuracies
// example accuracy, and eval lines carry "metrics": {"macro_f1"}.
//   {"event":"stopped","step":..,"checkpoint_dir":"<abs path>"}   (SIGTERM; exit 0)
//   {"event":"error","code":"INVALID_ARGUMENT","message":".."}    (then exit 2)
// Optional numbers are left out when unknown (no validation data, ...).
// Neither gRPC nor libtorch.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tunefleet::trainer {

enum class ReportKind { kStarted, kProgress, kEval, kCheckpoint, kCompleted, kStopped, kError };
absl::string_view ReportKindName(ReportKind k);  // "started", ...

struct ReportEvent {
  ReportKind kind = ReportKind::kProgress;
  int64_t step = 0;         // progress, eval, checkpoint, stopped
  int64_t total_steps = 0;  // started, progress
  double epoch = 0;         // progress, eval, checkpoint (fractional)
  // started
  int64_t world_size = 0;
  int64_t rank = 0;
  int64_t resumed_step = 0;
  // progress
  std::optional<double> train_loss;
  std::optional<double> train_token_accuracy;
  std::optional<double> learning_rate;
  std::optional<double> tokens_per_second;
  std::optional<double> eta_seconds;
  int64_t trained_tokens = 0;  // progress, completed
  // eval, completed
  std::optional<double> valid_loss;
  std::optional<double> valid_token_accuracy;
  std::optional<double> base_valid_loss;  // completed
  // checkpoint ("dir"), stopped ("checkpoint_dir")
  std::string checkpoint_dir;
  // completed
  std::string result_dir;
  // checkpoint, completed (and progress, eval when not empty): further
  // named figures (padding_fraction, reward_margin, ...)
  std::map<std::string, double> metrics;
  // completed: early stopping ended the run (early_stopping_patience
  // evaluations without a better validation loss); written only when true.
  bool stopped_early = false;
  // error: an absl status code name ("INVALID_ARGUMENT") and message
  std::string code;
  std::string message;
};

// One line of JSON, without the newline. Non-finite numbers are left out.
std::string FormatReportLine(const ReportEvent& event);
// Parses one line (a trailing newline is allowed); INVALID_ARGUMENT for
// anything that is not a known event with the right field types.
absl::StatusOr<ReportEvent> ParseReportLine(absl::string_view line);

// An error event from a status (code name + message).
ReportEvent ErrorEvent(const absl::Status& status);
// The absl code of an error event's `code` (UNKNOWN when not a code name).
absl::StatusCode ParseStatusCode(absl::string_view name);

// Writes events to a file descriptor, one whole line per write(2) so that
// lines never interleave. Thread-safe. fd < 0: events are dropped. A reader
// that went away (EPIPE) is not an error for the writer's caller: the worker
// must go on (or checkpoint) without its agent.
class ReportWriter {
 public:
  explicit ReportWriter(int fd) : fd_(fd) {}
  absl::Status Write(const ReportEvent& event);

 private:
  std::mutex mu_;
  int fd_;
};

// Splits a byte stream (what the agent reads from the pipe) into lines.
class ReportLineSplitter {
 public:
  // Appends bytes; returns the complete lines they finish (without '\n').
  std::vector<std::string> Add(absl::string_view bytes);
  // What is left after the writer closed (a last line without '\n').
  std::string TakeRest();

 private:
  std::string pending_;
};

}  // namespace tunefleet::trainer
