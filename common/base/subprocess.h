// A child process started with fork/exec, for `tunefleet local` (which runs
// the fleet on one machine) and for tests that start real service binaries
// and kill them with real signals.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tunefleet {

// Not thread-safe. The destructor SIGKILLs and reaps a child still running.
class Subprocess {
 public:
  struct Options {
    // Where stdout and stderr go (appended); empty: inherited.
    std::string log_file;
    // Extra environment entries "NAME=value" on top of the parent's.
    std::vector<std::string> env;
  };

  static absl::StatusOr<Subprocess> Start(const std::vector<std::string>& argv,
                                          const Options& options);
  static absl::StatusOr<Subprocess> Start(const std::vector<std::string>& argv) {
    return Start(argv, Options{});
  }

  Subprocess(Subprocess&& other) noexcept : pid_(other.pid_) { other.pid_ = -1; }
  Subprocess& operator=(Subprocess&& other) noexcept;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  absl::Status Signal(int sig);
  // Waits up to `timeout` for the child to exit. Returns its wait status
  // (see WIFEXITED) or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Lets the child outlive this object (it is no longer killed or reaped
  // here); returns its pid.
  pid_t Release() {
    pid_t pid = pid_;
    pid_ = -1;
    return pid;
  }

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

// Describes a wait status: "exited 0", "killed by signal 9".
std::string DescribeWaitStatus(int status);

}  // namespace tunefleet
