// A server stream woken by one event-bus topic: the shared pull reactor
// (common/rpc/stream_reactor.h) subscribed to `topic` for its lifetime.
// StreamJobEvents ("job/<id>"), WatchDeployment ("deployment/<id>") and the
// replicas' WatchDeployments ("deployments") are this plus their Pull.
#pragma once

#include <string>
#include <utility>

#include "common/rpc/stream_reactor.h"
#include "services/scheduler/event_bus.h"

namespace tunefleet::scheduler {

template <typename Msg>
class TopicReactor : public rpc::PullWriteReactor<Msg>, public Watcher {
 public:
  void Wake() override { rpc::PullWriteReactor<Msg>::Wake(); }

 protected:
  // Pulls run on `executor`: never under the bus's lock, never on a gRPC
  // reaction thread.
  TopicReactor(EventBus* bus, std::string topic, rpc::Executor* executor)
      : rpc::PullWriteReactor<Msg>(executor), bus_(bus), topic_(std::move(topic)) {}

  // The subclass's constructor ends with Begin() (a wake may come at once,
  // so the subclass must be whole): subscribes, then pulls the first time;
  // a full topic (RESOURCE_EXHAUSTED) ends the stream with that status.
  void Begin() {
    absl::Status s = bus_->Subscribe(topic_, this);
    subscribed_ = s.ok();
    if (!s.ok()) {
      this->Fail(s);
      return;
    }
    this->Start();
  }

  // Runs once when the stream is over, after the topic is left.
  virtual void Ended() {}

 private:
  void Cleanup() final {
    if (subscribed_) bus_->Unsubscribe(topic_, this);
    Ended();
  }

  EventBus* const bus_;
  const std::string topic_;
  bool subscribed_ = false;
};

}  // namespace tunefleet::scheduler
