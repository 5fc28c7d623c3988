// Prometheus metrics of a serving replica, per deployment: requests by
// outcome, tokens in and out, time to first token, queue wait, request
// duration, content-filter blocks by source and category and filter time;
// per base: running requests, queued requests, KV-cache rows, resident
// adapters (refreshed by Refresh). Thread-safe; per-deployment handles are
// created once and cached.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "services/serving/replica.h"

namespace tunefleet::serving {

class ServingMetrics {
 public:
  explicit ServingMetrics(prometheus::Registry& registry);
  // One finished chat ("ok", "content_filter", or a status code name).
  void RecordChat(const std::string& deployment, const std::string& outcome, const ChatResult* result);
  void RecordBlock(const std::string& deployment, const char* source, const FilterVerdict& verdict);
  void Refresh(const Replica& replica);

 private:
  struct PerDeployment {
    prometheus::Counter* prompt_tokens;
    prometheus::Counter* completion_tokens;
    prometheus::Histogram* ttft;
    prometheus::Histogram* queue;
    prometheus::Histogram* duration;
    prometheus::Histogram* filter;
    prometheus::Histogram* inter_token;
  };
  PerDeployment& For(const std::string& deployment);

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Family<prometheus::Histogram>& queue_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Histogram>& filter_;
  prometheus::Family<prometheus::Histogram>& inter_token_;
  prometheus::Family<prometheus::Counter>& blocks_;
  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Family<prometheus::Gauge>& kv_rows_;
  prometheus::Family<prometheus::Gauge>& adapters_;
  std::mutex mu_;
  std::map<std::string, PerDeployment> per_deployment_;
};

}  // namespace tunefleet::serving
