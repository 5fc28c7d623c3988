// A test-side TrainerControlService on a real loopback gRPC server: the
// test sets the desired assignments (and checkpoint_and_stop), and can make
// it forget the node or answer UNAVAILABLE; it records every call so that
// tests wait on what the agent reported.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/auth.h"
#include "common/rpc/server.h"
#include "common/rpc/service_util.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"

namespace tunefleet::trainer::testing {

namespace iv1 = ::tunefleet::internal::v1;

class FakeScheduler final : public iv1::TrainerControlService::CallbackService {
 public:
  explicit FakeScheduler(std::shared_ptr<const rpc::KeyRing> keys) : auth_(std::move(keys)) {
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Milliseconds(200);
    server_ = std::make_unique<rpc::Server>(so);
    server_->AddService(this);
    absl::Status s = server_->Start();
    EXPECT_TRUE(s.ok()) << s;
    server_->SetServing(true);
  }
  ~FakeScheduler() override { server_->Shutdown(); }

  std::string address() const { return absl::StrCat("127.0.0.1:", server_->port()); }

  // --- what the test controls ---
  void SetDesired(std::vector<iv1::Assignment> desired, std::set<std::string> stop = {}) {
    absl::MutexLock lock(&mu_);
    desired_ = std::move(desired);
    stop_ = std::move(stop);
  }
  void ForgetNode() {
    absl::MutexLock lock(&mu_);
    forget_ = true;
  }
  void FailHeartbeats(int n) {
    absl::MutexLock lock(&mu_);
    unavailable_ = n;
  }
  void SetKeepRunning(bool keep) {
    absl::MutexLock lock(&mu_);
    keep_running_ = keep;
  }

  // --- what the agent did ---
  struct Record {
    std::vector<iv1::RegisterNodeRequest> registrations;
    int heartbeats = 0;
    int refused_heartbeats = 0;
    iv1::HeartbeatRequest last_heartbeat;
    std::vector<iv1::ReportProgressRequest> progress;
    std::vector<iv1::ReportCheckpointRequest> checkpoints;
    std::vector<iv1::CompleteAssignmentRequest> completions;
  };
  Record record() {
    absl::MutexLock lock(&mu_);
    return record_;
  }
  // Waits until `pred(record)` holds; false after the deadline.
  template <typename Pred>
  bool WaitFor(Pred pred, absl::Duration timeout = absl::Seconds(30)) {
    absl::MutexLock lock(&mu_);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(record_); };
    return mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }
  // The completion of one assignment, once it came.
  std::optional<iv1::CompleteAssignmentRequest> WaitForCompletion(const std::string& id) {
    std::optional<iv1::CompleteAssignmentRequest> out;
    WaitFor([&](const Record& r) {
      for (const auto& c : r.completions) {
        if (c.assignment_id() == id) {
          out = c;
          return true;
        }
      }
      return false;
    });
    return out;
  }

  // --- the service ---
  grpc::ServerUnaryReactor* RegisterNode(grpc::CallbackServerContext* ctx,
                                         const iv1::RegisterNodeRequest* req,
                                         iv1::RegisterNodeResponse* resp) override {
    if (auto s = Auth(*ctx); !s.ok()) return rpc::FinishUnary(ctx, s);
    absl::MutexLock lock(&mu_);
    record_.registrations.push_back(*req);
    node_id_ = absl::StrCat("node-", record_.registrations.size());
    forget_ = false;
    resp->set_node_id(node_id_);
    resp->set_heartbeat_interval_ms(30);
    resp->set_lease_ms(1000);
    return rpc::FinishUnary(ctx, absl::OkStatus());
  }
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const iv1::HeartbeatRequest* req,
                                      iv1::HeartbeatResponse* resp) override {
    if (auto s = Auth(*ctx); !s.ok()) return rpc::FinishUnary(ctx, s);
    absl::MutexLock lock(&mu_);
    if (unavailable_ > 0) {
      --unavailable_;
      ++record_.refused_heartbeats;
      return rpc::FinishUnary(ctx, absl::UnavailableError("the scheduler is restarting"));
    }
    if (forget_ || req->node_id() != node_id_) {
      return rpc::FinishUnary(
          ctx, absl::NotFoundError(absl::StrCat("node ", req->node_id(), " is not registered")));
    }
    ++record_.heartbeats;
    record_.last_heartbeat = *req;
    for (const auto& a : desired_) *resp->add_assignments() = a;
    for (const auto& id : stop_) resp->add_checkpoint_and_stop(id);
    return rpc::FinishUnary(ctx, absl::OkStatus());
  }
  grpc::ServerUnaryReactor* ReportProgress(grpc::CallbackServerContext* ctx,
                                           const iv1::ReportProgressRequest* req,
                                           iv1::ReportProgressResponse* resp) override {
    if (auto s = Auth(*ctx); !s.ok()) return rpc::FinishUnary(ctx, s);
    absl::MutexLock lock(&mu_);
    record_.progress.push_back(*req);
    resp->set_keep_running(keep_running_);
    return rpc::FinishUnary(ctx, absl::OkStatus());
  }
  grpc::ServerUnaryReactor* ReportCheckpoint(grpc::CallbackServerContext* ctx,
                                             const iv1::ReportCheckpointRequest* req,
                                             iv1::ReportCheckpointResponse* resp) override {
    if (auto s = Auth(*ctx); !s.ok()) return rpc::FinishUnary(ctx, s);
    absl::MutexLock lock(&mu_);
    record_.checkpoints.push_back(*req);
    resp->set_checkpoint_id(absl::StrCat("ckpt-", record_.checkpoints.size()));
    return rpc::FinishUnary(ctx, absl::OkStatus());
  }
  grpc::ServerUnaryReactor* CompleteAssignment(grpc::CallbackServerContext* ctx,
                                               const iv1::CompleteAssignmentRequest* req,
                                               iv1::CompleteAssignmentResponse* resp) override {
    if (auto s = Auth(*ctx); !s.ok()) return rpc::FinishUnary(ctx, s);
    absl::MutexLock lock(&mu_);
    record_.completions.push_back(*req);
    return rpc::FinishUnary(ctx, absl::OkStatus());
  }

 private:
  absl::Status Auth(const grpc::CallbackServerContext& ctx) {
    return auth_.AuthenticateInternal(ctx).status();
  }

  rpc::Authenticator auth_;
  std::unique_ptr<rpc::Server> server_;
  absl::Mutex mu_;
  std::string node_id_ ABSL_GUARDED_BY(mu_);
  std::vector<iv1::Assignment> desired_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> stop_ ABSL_GUARDED_BY(mu_);
  bool forget_ ABSL_GUARDED_BY(mu_) = false;
  int unavailable_ ABSL_GUARDED_BY(mu_) = 0;
  bool keep_running_ ABSL_GUARDED_BY(mu_) = true;
  Record record_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::trainer::testing
