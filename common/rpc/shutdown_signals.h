// Shutdown signals for a process's main() (every service, and `tunefleet
// local`): BlockShutdownSignals() installs handlers for SIGTERM and SIGINT
// (call it first thing, so that an early signal is not lost);
// WaitForShutdownSignal() blocks until one arrives and returns it. No gRPC.
#pragma once

namespace tunefleet::rpc {

void BlockShutdownSignals();
int WaitForShutdownSignal();

}  // namespace tunefleet::rpc
