#include "common/rpc/service_util.h"

#include "absl/strings/str_cat.h"
#include "common/rpc/auth.h"

namespace tunefleet::rpc {

absl::Status NotImplemented(absl::string_view method) {
  return absl::UnimplementedError(
      absl::StrCat(method, " is part of the v1 API but not implemented in this release"));
}

grpc::ServerUnaryReactor* RunOnExecutor(grpc::CallbackServerContext* context,
                                        absl::StatusOr<Principal> caller, Executor* executor,
                                        std::function<absl::Status(const Principal&)> work) {
  if (!caller.ok()) return FinishUnary(context, caller.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor->Submit([reactor, caller = *std::move(caller), work = std::move(work)] {
    reactor->Finish(ToGrpcStatus(work(caller)));
  });
  return reactor;
}

absl::Status AuthenticateThenNotImplemented(const Authenticator& auth,
                                            const grpc::CallbackServerContext& context,
                                            Audience audience, absl::string_view method) {
  absl::Status status = audience == Audience::kInternal
                            ? auth.AuthenticateInternal(context).status()
                            : auth.AuthenticateTenant(context).status();
  if (!status.ok()) return status;
  return NotImplemented(method);
}

Executor::Executor(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> task;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
          if (tasks_.empty()) return;
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
        task();
      }
    });
  }
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Executor::Submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

}  // namespace tunefleet::rpc
