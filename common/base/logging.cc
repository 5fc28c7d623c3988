#include "common/base/logging.h"

#include <chrono>
#include <cstdio>
#include <ctime>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace tunefleet {

namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%fZ %^%L%$ [%n] %v";

void AppendJsonString(spdlog::string_view_t s, spdlog::memory_buf_t& out) {
  out.push_back('"');
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out.append(spdlog::string_view_t("\\\"")); break;
      case '\\': out.append(spdlog::string_view_t("\\\\")); break;
      case '\n': out.append(spdlog::string_view_t("\\n")); break;
      case '\r': out.append(spdlog::string_view_t("\\r")); break;
      case '\t': out.append(spdlog::string_view_t("\\t")); break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", c);
          out.append(spdlog::string_view_t(esc));
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

// One JSON object per line; the time in UTC with microseconds, as the text
// pattern writes it.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto since_epoch = msg.time.time_since_epoch();
    const std::time_t secs = duration_cast<seconds>(since_epoch).count();
    const auto micros = duration_cast<microseconds>(since_epoch).count() % 1000000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char time_buf[40];
    size_t n = std::strftime(time_buf, sizeof(time_buf) - 9, "%Y-%m-%dT%H:%M:%S", &tm);
    time_buf[n++] = '.';
    for (long long div = 100000, us = micros; div > 0; div /= 10) {
      time_buf[n++] = static_cast<char>('0' + (us / div) % 10);
    }
    time_buf[n++] = 'Z';
    time_buf[n] = '\0';
    dest.append(spdlog::string_view_t("{\"time\":\""));
    dest.append(spdlog::string_view_t(time_buf));
    dest.append(spdlog::string_view_t("\",\"level\":"));
    AppendJsonString(spdlog::level::to_string_view(msg.level), dest);
    dest.append(spdlog::string_view_t(",\"logger\":"));
    AppendJsonString(msg.logger_name, dest);
    dest.append(spdlog::string_view_t(",\"message\":"));
    AppendJsonString(msg.payload, dest);
    dest.append(spdlog::string_view_t("}\n"));
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

bool AbslParseFlag(absl::string_view text, LogFormat* format, std::string* error) {
  if (text == "text") {
    *format = LogFormat::kText;
    return true;
  }
  if (text == "json") {
    *format = LogFormat::kJson;
    return true;
  }
  *error = "must be text or json";
  return false;
}

std::string AbslUnparseFlag(LogFormat format) {
  return format == LogFormat::kJson ? "json" : "text";
}

std::unique_ptr<spdlog::formatter> MakeJsonLogFormatter() {
  return std::make_unique<JsonFormatter>();
}

void SetLogFormat(spdlog::logger& logger, LogFormat format) {
  if (format == LogFormat::kJson) {
    logger.set_formatter(MakeJsonLogFormatter());
  } else {
    logger.set_formatter(
        std::make_unique<spdlog::pattern_formatter>(kTextPattern, spdlog::pattern_time_type::utc));
  }
}

void InitLogging(const std::string& service, const std::string& level, LogFormat format) {
  auto logger = spdlog::stderr_color_mt(service);
  SetLogFormat(*logger, format);
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

}  // namespace tunefleet
