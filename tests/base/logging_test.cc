// --log_format=json: every line a log collector reads is one JSON object with
// time, level, logger and message, whatever the message holds.
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>

#include "absl/strings/str_split.h"
#include "common/base/logging.h"

namespace tunefleet {
namespace {

using ::testing::MatchesRegex;
using ::testing::SizeIs;

std::vector<nlohmann::json> ParseLines(const std::string& text) {
  std::vector<nlohmann::json> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    out.push_back(j);
  }
  return out;
}

TEST(JsonLogTest, EveryLineIsOneJsonObjectWithTimeLevelLoggerAndMessage) {
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  spdlog::logger logger("scheduler", sink);
  logger.set_level(spdlog::level::trace);
  SetLogFormat(logger, LogFormat::kJson);

  logger.info("job={} step={} loss={}", "ftjob-abc", 120, 1.93);
  logger.warn("a \"quoted\" name, a back\\slash,\ta tab");
  logger.error("two\nlines\r and a bell \x07 and \x01");
  logger.debug("caf\xc3\xa9 \xe2\x9c\x93");  // UTF-8 stays as it is
  logger.critical("{}", std::string("nul\0inside", 10));

  auto lines = ParseLines(os.str());
  ASSERT_THAT(lines, SizeIs(5));
  for (const auto& j : lines) {
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j.size(), 4u) << j.dump();
    EXPECT_EQ(j["logger"], "scheduler");
    EXPECT_THAT(j["time"].get<std::string>(),
                MatchesRegex(R"(20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:)"
                             R"([0-6][0-9]\.[0-9]{6}Z)"));
  }
  EXPECT_EQ(lines[0]["level"], "info");
  EXPECT_EQ(lines[0]["message"], "job=ftjob-abc step=120 loss=1.93");
  EXPECT_EQ(lines[1]["level"], "warning");
  EXPECT_EQ(lines[1]["message"], "a \"quoted\" name, a back\\slash,\ta tab");
  EXPECT_EQ(lines[2]["level"], "error");
  EXPECT_EQ(lines[2]["message"], "two\nlines\r and a bell \x07 and \x01");
  EXPECT_EQ(lines[3]["level"], "debug");
  EXPECT_EQ(lines[3]["message"], "caf\xc3\xa9 \xe2\x9c\x93");
  EXPECT_EQ(lines[4]["level"], "critical");
  EXPECT_EQ(lines[4]["message"], std::string("nul\0inside", 10));
}

TEST(JsonLogTest, TextFormatAndFlagValues) {
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  spdlog::logger logger("dataset", sink);
  SetLogFormat(logger, LogFormat::kText);
  logger.info("file=file-1 processed");
  const std::string line = os.str();
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_THAT(line.substr(0, line.size() - 1),
              MatchesRegex(R"(20[0-9-]+T[0-9:]+\.[0-9]{6}Z I \[dataset\] file=file-1 processed)"));

  LogFormat f = LogFormat::kText;
  std::string error;
  EXPECT_TRUE(AbslParseFlag("json", &f, &error));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_EQ(AbslUnparseFlag(f), "json");
  EXPECT_TRUE(AbslParseFlag("text", &f, &error));
  EXPECT_EQ(f, LogFormat::kText);
  EXPECT_FALSE(AbslParseFlag("yaml", &f, &error));
  EXPECT_EQ(error, "must be text or json");
}

}  // namespace
}  // namespace tunefleet
