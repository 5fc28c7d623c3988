// Small pieces every callback service class uses: finishing a call from an
// absl::Status, rejecting streaming calls, and an executor so that blocking
// work never runs on a gRPC reaction thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/rpc/auth.h"
#include "common/rpc/status.h"

namespace tunefleet::rpc {

// Finishes a unary call with `status` through the context's default reactor.
inline grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                             const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A server-streaming reactor that finishes at once with an error.
template <typename Response>
class RejectedWriteReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RejectedWriteReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// A client-streaming reactor that finishes at once with an error.
template <typename Request>
class RejectedReadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RejectedReadReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// The status for an API method whose implementation has not landed yet.
absl::Status NotImplemented(absl::string_view method);

// A fixed pool of threads for blocking work (disk, SQLite, tokenization).
// Thread-safe. The destructor runs every queued task, then joins.
class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Submit(std::function<void()> task);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace tunefleet::rpc

namespace tunefleet::rpc {

// The usual shape of a unary method whose work blocks (disk, SQLite): finish
// at once with `caller`'s error, or run `work` on `executor` and finish with
// its status.
grpc::ServerUnaryReactor* RunOnExecutor(grpc::CallbackServerContext* context,
                                        absl::StatusOr<Principal> caller, Executor* executor,
                                        std::function<absl::Status(const Principal&)> work);

// For methods whose implementation has not landed: the caller is still
// authenticated (so that clients see the real auth behaviour), then told
// UNIMPLEMENTED.
enum class Audience { kTenant, kInternal };
absl::Status AuthenticateThenNotImplemented(const Authenticator& auth,
                                            const grpc::CallbackServerContext& context,
                                            Audience audience, absl::string_view method);

}  // namespace tunefleet::rpc

// Stub methods for API calls whose implementation lands in a later release.
// Each still authenticates (see AuthenticateThenNotImplemented).
#define TF_NOT_IMPLEMENTED_UNARY(Method, Request, Response, audience)                       \
  grpc::ServerUnaryReactor* Method(grpc::CallbackServerContext* context, const Request*,   \
                                   Response*) override {                                   \
    return ::tunefleet::rpc::FinishUnary(                                                  \
        context, ::tunefleet::rpc::AuthenticateThenNotImplemented(auth_, *context, audience, \
                                                                  #Method));               \
  }
#define TF_NOT_IMPLEMENTED_SERVER_STREAM(Method, Request, Response, audience)                \
  grpc::ServerWriteReactor<Response>* Method(grpc::CallbackServerContext* context,          \
                                             const Request*) override {                     \
    return new ::tunefleet::rpc::RejectedWriteReactor<Response>(                            \
        ::tunefleet::rpc::AuthenticateThenNotImplemented(auth_, *context, audience, #Method)); \
  }
