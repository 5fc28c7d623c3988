// Test helper: supervises one worker (argv[1..]) and waits forever, so that
// a test can SIGKILL this "agent" and check that the worker dies with it.
#include <unistd.h>

#include <cstdio>

#include "services/trainer/agent/worker_process.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  tunefleet::trainer::WorkerProcessOptions options;
  for (int i = 1; i < argc; ++i) options.argv.push_back(argv[i]);
  auto worker = tunefleet::trainer::WorkerProcess::Start(
      options, [](std::string) {}, [](const tunefleet::trainer::WorkerExit&) {});
  if (!worker.ok()) {
    std::fprintf(stderr, "%s\n", worker.status().ToString().c_str());
    return 1;
  }
  for (;;) pause();
}
