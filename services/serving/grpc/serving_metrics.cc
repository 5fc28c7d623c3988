#include "services/serving/grpc/serving_metrics.h"

namespace tunefleet::serving {

namespace {
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
}  // namespace

ServingMetrics::ServingMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("tunefleet_serving_requests_total")
                    .Help("Chat completions by deployment and outcome")
                    .Register(registry)),
      tokens_(prometheus::BuildCounter()
                  .Name("tunefleet_serving_tokens_total")
                  .Help("Prompt and completion tokens by deployment")
                  .Register(registry)),
      ttft_(prometheus::BuildHistogram()
                .Name("tunefleet_serving_time_to_first_token_seconds")
                .Help("Request arrival to first generated token")
                .Register(registry)),
      queue_(prometheus::BuildHistogram()
                 .Name("tunefleet_serving_queue_wait_seconds")
                 .Help("Time a request waited for a batch row")
                 .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name("tunefleet_serving_request_duration_seconds")
                    .Help("Whole generation time of a request")
                    .Register(registry)),
      filter_(prometheus::BuildHistogram()
                  .Name("tunefleet_serving_filter_seconds")
                  .Help("Time the content filters spent on one answer")
                  .Register(registry)),
      inter_token_(prometheus::BuildHistogram()
                       .Name("tunefleet_serving_inter_token_seconds")
                       .Help("Mean time between a request's generated tokens after the first")
                       .Register(registry)),
      blocks_(prometheus::BuildCounter()
                  .Name("tunefleet_serving_filter_blocks_total")
                  .Help("Texts blocked by a content filter, by source and category")
                  .Register(registry)),
      running_(prometheus::BuildGauge()
                   .Name("tunefleet_serving_running_requests")
                   .Help("Requests in the engine's batch, per base model")
                   .Register(registry)),
      queued_(prometheus::BuildGauge()
                  .Name("tunefleet_serving_queued_requests")
                  .Help("Requests waiting for a batch row, per base model")
                  .Register(registry)),
      kv_rows_(prometheus::BuildGauge()
                   .Name("tunefleet_serving_kv_cache_rows")
                   .Help("Rows of the KV cache, per base model")
                   .Register(registry)),
      adapters_(prometheus::BuildGauge()
                    .Name("tunefleet_serving_resident_adapters")
                    .Help("LoRA adapters in memory, per base model")
                    .Register(registry)) {}

ServingMetrics::PerDeployment& ServingMetrics::For(const std::string& d) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = per_deployment_.find(d);
  if (it != per_deployment_.end()) return it->second;
  PerDeployment p;
  p.prompt_tokens = &tokens_.Add({{"deployment", d}, {"kind", "prompt"}});
  p.completion_tokens = &tokens_.Add({{"deployment", d}, {"kind", "completion"}});
  p.ttft = &ttft_.Add({{"deployment", d}}, LatencyBuckets());
  p.queue = &queue_.Add({{"deployment", d}}, LatencyBuckets());
  p.duration = &duration_.Add({{"deployment", d}}, LatencyBuckets());
  p.filter = &filter_.Add({{"deployment", d}},
                          prometheus::Histogram::BucketBoundaries{1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1});
  p.inter_token = &inter_token_.Add(
      {{"deployment", d}},
      prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                              0.5, 1});
  return per_deployment_.emplace(d, p).first->second;
}

void ServingMetrics::RecordChat(const std::string& deployment, const std::string& outcome,
                                const ChatResult* r) {
  requests_.Add({{"deployment", deployment}, {"outcome", outcome}}).Increment();
  if (r == nullptr) return;
  PerDeployment& p = For(deployment);
  p.prompt_tokens->Increment(static_cast<double>(r->prompt_tokens));
  p.completion_tokens->Increment(static_cast<double>(r->completion_tokens));
  if (r->ttft_seconds > 0) p.ttft->Observe(r->ttft_seconds);
  p.queue->Observe(r->queue_seconds);
  p.duration->Observe(r->total_seconds);
  p.filter->Observe(r->filter_seconds);
  if (r->completion_tokens > 1 && r->ttft_seconds > 0 && r->total_seconds > r->ttft_seconds) {
    p.inter_token->Observe((r->total_seconds - r->ttft_seconds) /
                           static_cast<double>(r->completion_tokens - 1));
  }
}

void ServingMetrics::RecordBlock(const std::string& deployment, const char* source,
                                 const FilterVerdict& v) {
  for (const CategoryVerdict& c : v.categories) {
    if (!c.filtered) continue;
    blocks_.Add({{"deployment", deployment}, {"source", source},
                 {"category", std::to_string(static_cast<int>(c.category))}})
        .Increment();
  }
  for (const FindingVerdict& f : v.findings) {
    if (!f.filtered) continue;
    blocks_.Add({{"deployment", deployment}, {"source", source}, {"category", f.filter + ":" + f.kind}})
        .Increment();
  }
}

void ServingMetrics::Refresh(const Replica& replica) {
  for (const Replica::BaseStats& s : replica.Stats()) {
    running_.Add({{"base", s.base}}).Set(static_cast<double>(s.engine.running));
    queued_.Add({{"base", s.base}}).Set(static_cast<double>(s.engine.queued));
    kv_rows_.Add({{"base", s.base}}).Set(static_cast<double>(s.engine.cache_rows));
    adapters_.Add({{"base", s.base}}).Set(static_cast<double>(s.adapters.resident));
  }
}

}  // namespace tunefleet::serving
