#include "services/scheduler/event_bus.h"

#include "absl/strings/str_cat.h"

namespace tunefleet::scheduler {

absl::Status EventBus::Subscribe(const std::string& topic, Watcher* w) {
  absl::MutexLock lock(&mu_);
  auto& set = topics_[topic];
  if (static_cast<int>(set.size()) >= max_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many watchers of ", topic, " (at most ", max_, ")"));
  }
  set.insert(w);
  return absl::OkStatus();
}

void EventBus::Unsubscribe(const std::string& topic, Watcher* w) {
  absl::MutexLock lock(&mu_);
  auto it = topics_.find(topic);
  if (it == topics_.end()) return;
  it->second.erase(w);
  if (it->second.empty()) topics_.erase(it);
}

void EventBus::Publish(const std::string& topic) {
  absl::MutexLock lock(&mu_);
  auto it = topics_.find(topic);
  if (it == topics_.end()) return;
  for (Watcher* w : it->second) w->Wake();
}

int EventBus::watchers(const std::string& topic) {
  absl::MutexLock lock(&mu_);
  auto it = topics_.find(topic);
  return it == topics_.end() ? 0 : static_cast<int>(it->second.size());
}

}  // namespace tunefleet::scheduler
