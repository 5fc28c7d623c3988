// tunefleet-train-worker: one training process (one rank) started by the
// trainer agent: `--spec <worker spec JSON> --report_fd <n>`. Reports one JSON
// line per event on the fd (services/trainer/protocol/report.h). Exit codes:
// 0 completed or stopped (SIGTERM: checkpoint, "stopped"), 2 error (an
// "error" event names it).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/model/allocator.h"
#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/worker_spec.h"
#include "services/trainer/worker/trainer.h"

ABSL_FLAG(std::string, spec, "", "Worker spec JSON file written by the trainer agent");
ABSL_FLAG(int, report_fd, -1, "Inherited file descriptor for report lines (-1: stdout)");

namespace {
std::atomic<bool> g_stop{false};
extern "C" void OnStopSignal(int) { g_stop.store(true); }
}  // namespace

int main(int argc, char** argv) {
  using namespace tunefleet::trainer;
  tunefleet::model::TuneAllocatorForTensorWork();
  absl::ParseCommandLine(argc, argv);
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // an agent that went away is not a crash

  int fd = absl::GetFlag(FLAGS_report_fd);
  if (fd < 0) fd = STDOUT_FILENO;
  ReportWriter report(fd);
  auto fail = [&](const absl::Status& s) {
    (void)report.Write(ErrorEvent(s));
    std::fprintf(stderr, "train-worker: %s\n", s.ToString().c_str());
    return 2;
  };
  if (absl::GetFlag(FLAGS_spec).empty()) return fail(absl::InvalidArgumentError("--spec is required"));
  absl::StatusOr<WorkerSpec> spec = ReadWorkerSpecFile(absl::GetFlag(FLAGS_spec));
  if (!spec.ok()) return fail(spec.status());
  WorkerRunOptions options;
  options.report = &report;
  options.stop_requested = &g_stop;
  absl::StatusOr<WorkerOutcome> outcome = RunWorker(*spec, options);
  if (!outcome.ok()) return fail(outcome.status());
  return 0;
}
