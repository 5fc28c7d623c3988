// A minimal blocking HTTP/1.0 GET over loopback, enough to scrape /metrics.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace tunefleet::testing {

// Returns the response body of GET http://127.0.0.1:<port><path>.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

}  // namespace tunefleet::testing
