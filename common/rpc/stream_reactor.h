// The server-streaming reactor, written once.
//
// PullWriteReactor<Msg> is level-triggered: the subclass says what comes
// next when asked (Pull), and the base keeps exactly one write in flight. It
// asks again when a write completes and whenever Wake() is called ("there
// may be something new", from any thread: an event bus, an engine).
//
// Slow-consumer policy: nothing queues behind a slow client. The producer
// never blocks and never buffers on the stream's behalf; what changed while
// a write was in flight is found by the next Pull (a job's next events from
// its history, a deployment's current state), so a client that reads slowly
// costs one message of memory, and a burst of changes coalesces.
//
// Pull may block (SQLite, disk): given an executor, every Pull runs there,
// never on a gRPC reaction thread; without one it runs on the thread that
// asked (the constructor, a write completion, a Wake), outside the
// reactor's lock. Only one Pull runs at a time; a Wake() during a Pull makes
// the base pull again rather than lose the wake.
//
// Ends: Pull returns kEnd (OK), or an error (that status); the client
// cancelling or going away ends it with CANCELLED. Cleanup() runs once,
// before the reactor deletes itself, after the last Pull; an event-bus
// watcher unsubscribes there.
#pragma once

#include <grpcpp/support/server_callback.h>

#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/service_util.h"
#include "common/rpc/status.h"

namespace tunefleet::rpc {

enum class Pulled { kMessage, kWait, kEnd };

template <typename Msg>
class PullWriteReactor : public grpc::ServerWriteReactor<Msg> {
 public:
  // Thread-safe; harmless after the stream ended (until Cleanup returns).
  void Wake() {
    absl::MutexLock lock(&mu_);
    if (pulling_) {
      wake_during_pull_ = true;
      return;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Pump();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Pump();
  }

  void OnDone() override {
    Cleanup();
    delete this;
  }

 protected:
  explicit PullWriteReactor(Executor* executor = nullptr) : executor_(executor) {}
  ~PullWriteReactor() override = default;

  // Fill *out and return kMessage; kWait when nothing is ready (a Wake()
  // will follow when something is); kEnd when the stream is complete.
  virtual absl::StatusOr<Pulled> Pull(Msg* out) = 0;
  virtual void Cleanup() {}

  // The subclass's constructor ends with one of these.
  void Start() {
    absl::MutexLock lock(&mu_);
    Pump();
  }
  void Fail(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    FinishLocked(ToGrpcStatus(status));
  }

 private:
  void FinishLocked(const grpc::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    this->Finish(s);
  }

  // Starts the next pull unless a pull or a write is in flight.
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || pulling_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    pulling_ = true;
    wake_during_pull_ = false;
    if (executor_ != nullptr) {
      executor_->Submit([this] { RunPull(); });
      return;
    }
    mu_.Unlock();
    RunPull();
    mu_.Lock();
  }

  // Pulls (again while wakes arrive during pulls) until there is a message
  // to write, nothing to do, or the end.
  void RunPull() ABSL_LOCKS_EXCLUDED(mu_) {
    for (;;) {
      absl::StatusOr<Pulled> r = Pull(&next_);
      absl::MutexLock lock(&mu_);
      pulling_ = false;
      if (finished_) return;
      if (!r.ok()) {
        FinishLocked(ToGrpcStatus(r.status()));
        return;
      }
      if (cancelled_) {
        FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
        return;
      }
      if (*r == Pulled::kMessage) {
        writing_ = true;
        this->StartWrite(&next_);
        return;
      }
      if (*r == Pulled::kEnd) {
        FinishLocked(grpc::Status::OK);
        return;
      }
      if (!wake_during_pull_) return;  // kWait: the next Wake() pulls
      wake_during_pull_ = false;
      pulling_ = true;
    }
  }

  Executor* const executor_;
  absl::Mutex mu_;
  Msg next_;  // written by the one Pull in flight, then by gRPC's write
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool pulling_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_during_pull_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunefleet::rpc
