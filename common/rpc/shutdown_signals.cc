#include "common/rpc/shutdown_signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

namespace tunefleet::rpc {

namespace {
// Self-pipe: the handler only writes the signal number (async-signal-safe);
// WaitForShutdownSignal reads it. Unlike sigwait this works whichever thread
// the kernel picks, whatever signal masks libraries set on their threads.
int g_signal_pipe[2] = {-1, -1};

void OnShutdownSignal(int sig) {
  unsigned char byte = static_cast<unsigned char>(sig);
  int saved = errno;
  (void)!write(g_signal_pipe[1], &byte, 1);
  errno = saved;
}
}  // namespace

void BlockShutdownSignals() {
  if (g_signal_pipe[0] >= 0) return;
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return;
  struct sigaction sa {};
  sa.sa_handler = OnShutdownSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

int WaitForShutdownSignal() {
  BlockShutdownSignals();
  unsigned char byte = 0;
  for (;;) {
    ssize_t n = read(g_signal_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno != EINTR) return SIGTERM;
  }
}

}  // namespace tunefleet::rpc
