// Kills and reaps a forked child the test holds, if it still runs, when the
// test ends early (fault tests that fork a writer and SIGKILL it).
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

namespace tunefleet::testing {

struct ChildGuard {
  pid_t pid = -1;
  ~ChildGuard() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

}  // namespace tunefleet::testing
