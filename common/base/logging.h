// The project's one logging library is spdlog; this sets it up once per
// process. Log lines name what happened to which id: "job=ftjob-… step=120".
#pragma once

#include <string>

#include <spdlog/spdlog.h>

namespace tunefleet {

// `level` is one of trace, debug, info, warn, error, off. `service` is
// prefixed to every line so that interleaved fleet logs stay readable.
void InitLogging(const std::string& service, const std::string& level);

}  // namespace tunefleet
