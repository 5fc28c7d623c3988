// Wakes watchers (streaming reactors) when a topic changes: "job/<id>" when a
// job gains an event, "deployments" when the desired deployments change.
//
// Bounded by construction: a notification carries no data, only "look again";
// each watcher pulls what it has not sent yet from the scheduler (the job's
// event history, the current desired set), so a slow watcher costs no memory
// and a burst of changes coalesces into one wake. At most
// `max_watchers_per_topic` watchers per topic (RESOURCE_EXHAUSTED beyond).
//
// Thread-safe. Wake() runs under the bus lock: it must be quick and must not
// call back into the bus; Unsubscribe() returns only when no Wake() of that
// watcher is running, so a watcher may delete itself right after.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace tunefleet::scheduler {

class Watcher {
 public:
  virtual ~Watcher() = default;
  virtual void Wake() = 0;
};

class EventBus {
 public:
  explicit EventBus(int max_watchers_per_topic = 1024) : max_(max_watchers_per_topic) {}
  absl::Status Subscribe(const std::string& topic, Watcher* w);
  void Unsubscribe(const std::string& topic, Watcher* w);
  void Publish(const std::string& topic);
  int watchers(const std::string& topic);

 private:
  const int max_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<Watcher*>> topics_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunefleet::scheduler
