// One supervised worker process: started in its own process group with a
// death signal tied to the agent, a pipe it reports on (one line per event),
// a report timeout that turns a silent (hung) worker into a killed one, and
// reaping. The agent's reconcile loop owns one per running assignment.
//
// Why not common/base/subprocess.h: a worker needs its own process group (so
// that a kill reaches whatever it forked), PR_SET_PDEATHSIG (so that an agent
// killed with SIGKILL leaves no orphan) and an inherited report fd; and the
// death signal fires when the *thread* that forked exits, so the fork happens
// on the supervisor's own thread, which lives exactly as long as the child.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/clock.h"

namespace tunefleet::trainer {

struct WorkerProcessOptions {
  // argv[0] is the path of the executable (no PATH search).
  std::vector<std::string> argv;
  // "NAME=value" entries that override or extend the agent's environment.
  std::vector<std::string> env;
  // The fd number under which the child finds the write end of the report
  // pipe (the caller puts it on the command line, e.g. --report_fd 3).
  int report_fd = 3;
  // stdout and stderr are appended here; empty: inherited from the agent.
  std::string log_file;
  // A child that writes no complete line for this long is killed (SIGKILL
  // to its group) and its exit is marked hung.
  absl::Duration report_timeout = absl::InfiniteDuration();
  // Measures the silence (monotonic time: a wall-clock step must not kill
  // a healthy worker).
  Clock* clock = Clock::Real();
  // How often the supervisor thread checks for exit and the timeout.
  absl::Duration poll_interval = absl::Milliseconds(20);
  // Longer lines are cut at this length (a worker must not make the agent
  // buffer without bound).
  size_t max_line_bytes = 1 << 20;
};

struct WorkerExit {
  int wait_status = 0;  // as from waitpid
  bool hung = false;    // killed by the supervisor after report_timeout
  absl::Duration silent_for;  // with hung: how long no line had come
  bool success() const;       // exited 0 and not hung
  // "exited 3", "killed by signal 9", "hung: no report for 30s, killed".
  std::string Describe() const;
};

// Thread-safe. Callbacks run on the supervisor thread, lines in order and
// then the exit exactly once; they must not call back into this object's
// destructor.
class WorkerProcess {
 public:
  using LineCallback = std::function<void(std::string line)>;
  using ExitCallback = std::function<void(const WorkerExit& exit)>;

  // Returns once the child has exec'd (NOT_FOUND when the binary cannot be
  // run, with the path and errno's message).
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(WorkerProcessOptions options,
                                                              LineCallback on_line,
                                                              ExitCallback on_exit);
  // SIGKILLs the group if the child still runs, then joins the thread.
  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `sig` to the whole process group; FAILED_PRECONDITION once the
  // child has been reaped (so a recycled pid is never signalled).
  absl::Status Signal(int sig);
  // The exit, once reaped and every line delivered; nullopt after
  // `timeout` (DEADLINE semantics, no error).
  std::optional<WorkerExit> WaitForExit(absl::Duration timeout);

 private:
  WorkerProcess() = default;
  void Run(int read_fd);

  WorkerProcessOptions options_;
  LineCallback on_line_;
  ExitCallback on_exit_;
  pid_t pid_ = -1;
  std::thread thread_;
  absl::Mutex mu_;
  bool reaped_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<WorkerExit> exit_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::trainer
