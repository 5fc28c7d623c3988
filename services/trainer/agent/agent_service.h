// The trainer agent's own gRPC surface: operators and tests ask it what it
// runs (GetNodeStatus). Thin: authenticate, ask the agent, convert nothing
// (the agent keeps its state as the internal proto).
#pragma once

#include "common/rpc/auth.h"
#include "common/rpc/service_util.h"
#include "services/trainer/agent/agent.h"
#include "tunefleet/internal/v1/trainer.grpc.pb.h"

namespace tunefleet::trainer {

class TrainerAgentServiceImpl final : public internal::v1::TrainerAgentService::CallbackService {
 public:
  // Both must outlive the service.
  TrainerAgentServiceImpl(const rpc::Authenticator* auth, const TrainerAgent* agent)
      : auth_(*auth), agent_(*agent) {}

  grpc::ServerUnaryReactor* GetNodeStatus(grpc::CallbackServerContext* context,
                                          const internal::v1::GetNodeStatusRequest* request,
                                          internal::v1::NodeStatus* response) override {
    auto principal = auth_.AuthenticateInternal(*context);
    if (!principal.ok()) return rpc::FinishUnary(context, principal.status());
    *response = agent_.Status();  // a copy under the agent's lock; never blocks long
    return rpc::FinishUnary(context, absl::OkStatus());
  }

 private:
  const rpc::Authenticator& auth_;
  const TrainerAgent& agent_;
};

}  // namespace tunefleet::trainer
