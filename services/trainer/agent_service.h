// The trainer agent's own gRPC surface (operators and tests ask it what it
// runs). Registration, heartbeats and worker supervision land with the
// trainer issue.
#pragma once

#include <string>

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"

namespace tunefleet::trainer {

class TrainerAgentServiceImpl final
    : public internal::v1::TrainerAgentService::CallbackService {
 public:
  TrainerAgentServiceImpl(const rpc::Authenticator* auth, std::string node_name)
      : auth_(*auth), node_name_(std::move(node_name)) {}

  grpc::ServerUnaryReactor* GetNodeStatus(grpc::CallbackServerContext* context,
                                          const internal::v1::GetNodeStatusRequest* request,
                                          internal::v1::NodeStatus* response) override {
    auto principal = auth_.AuthenticateInternal(*context);
    if (!principal.ok()) return rpc::FinishUnary(context, principal.status());
    response->set_node_name(node_name_);
    return rpc::FinishUnary(context, absl::OkStatus());
  }

 private:
  const rpc::Authenticator& auth_;
  const std::string node_name_;
};

}  // namespace tunefleet::trainer
