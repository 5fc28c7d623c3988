// The project's one logging library is spdlog; this sets it up once per
// process. Log lines name what happened to which id: "job=ftjob-… step=120".
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "absl/strings/string_view.h"

namespace tunefleet {

// How each log line looks: text for people, or one JSON object per line for
// log collectors (Fluent Bit, Vector, Loki's promtail):
//   {"time":"2026-12-01T17:04:27.123456Z","level":"info","logger":"scheduler",
//    "message":"job=ftjob-… step=120"}
enum class LogFormat { kText, kJson };

// absl flag support (--log_format=text|json).
bool AbslParseFlag(absl::string_view text, LogFormat* format, std::string* error);
std::string AbslUnparseFlag(LogFormat format);

// The formatter of LogFormat::kJson, for any spdlog sink.
std::unique_ptr<spdlog::formatter> MakeJsonLogFormatter();

// Sets `format` on every sink of `logger`.
void SetLogFormat(spdlog::logger& logger, LogFormat format);

// `level` is one of trace, debug, info, warn, error, off. `service` is
// prefixed to every line (the "logger" field in JSON) so that interleaved
// fleet logs stay readable.
void InitLogging(const std::string& service, const std::string& level,
                 LogFormat format = LogFormat::kText);

}  // namespace tunefleet
