#include "common/rpc/metrics.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace tunefleet::rpc {
namespace {

using grpc::experimental::InterceptionHookPoints;

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(RpcMetrics* metrics, grpc::experimental::ServerRpcInfo* info)
      : metrics_(metrics), method_(info->method() ? info->method() : "unknown") {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      start_ = std::chrono::steady_clock::now();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->Record(method_, methods->GetSendStatus().error_code(), seconds);
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* metrics_;
  std::string method_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, info);
  }

 private:
  RpcMetrics* metrics_;
};

}  // namespace

const char* StatusCodeName(int code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS",   "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",      "DATA_LOSS",
      "UNAUTHENTICATED"};
  if (code < 0 || code > 16) return "UNKNOWN";
  return kNames[code];
}

RpcMetrics::RpcMetrics(const std::string& service, prometheus::Registry& registry)
    : total_(prometheus::BuildCounter()
                 .Name(absl::StrCat("tunefleet_", service, "_rpc_total"))
                 .Help("RPCs finished, by method and status code")
                 .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name(absl::StrCat("tunefleet_", service, "_rpc_duration_seconds"))
                    .Help("RPC latency from initial metadata to status, by method")
                    .Register(registry)) {}

void RpcMetrics::Record(const std::string& method, int code, double seconds) {
  prometheus::Counter* counter;
  prometheus::Histogram* histogram;
  {
    absl::MutexLock lock(&mu_);
    std::string key = absl::StrCat(method, "|", code);
    auto [cit, cnew] = counters_.try_emplace(key, nullptr);
    if (cnew) cit->second = &total_.Add({{"method", method}, {"code", StatusCodeName(code)}});
    counter = cit->second;
    auto [hit, hnew] = histograms_.try_emplace(method, nullptr);
    if (hnew) {
      hit->second = &duration_.Add(
          {{"method", method}},
          prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                  0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
    }
    histogram = hit->second;
  }
  counter->Increment();
  histogram->Observe(seconds);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::InterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

}  // namespace tunefleet::rpc
