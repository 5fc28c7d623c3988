#include "common/rpc/metrics_http.h"

#include <httplib.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tunefleet::rpc {

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& address) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  http_ = std::make_unique<httplib::Server>();
  // Scrapes are rare and small: a couple of threads are plenty.
  http_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  std::weak_ptr<prometheus::Registry> weak = registry_;
  http_->Get("/metrics", [weak](const httplib::Request&, httplib::Response& res) {
    auto registry = weak.lock();
    if (!registry) {
      res.status = 503;
      return;
    }
    prometheus::TextSerializer serializer;
    res.set_content(serializer.Serialize(registry->Collect()), "text/plain; version=0.0.4");
  });
  int bound = port == 0 ? http_->bind_to_any_port(host) : (http_->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    http_.reset();
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return bound;
}

void MetricsHttpServer::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
  http_.reset();
}

}  // namespace tunefleet::rpc
