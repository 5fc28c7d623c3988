// Where the CLI's settings come from (cli/client.h): flags, then the
// environment, then one config file (--config, TUNEFLEET_CONFIG, a
// `tunefleet local` dir's config.json, the user's config), each setting on
// its own.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli/client.h"
#include "cli/progress.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::cli {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

class CliConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) unsetenv(v);
    setenv("XDG_CONFIG_HOME", dir_.Join("xdg").c_str(), 1);
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
  }
  void Write(const std::string& path, const std::string& text) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << text;
  }
  static constexpr const char* kVars[] = {
      "TUNEFLEET_CONFIG", "TUNEFLEET_SCHEDULER", "TUNEFLEET_API_KEY", "TUNEFLEET_TLS_CA",
      "TUNEFLEET_TLS_CERT", "TUNEFLEET_TLS_KEY", "TUNEFLEET_TLS_SERVER_NAME", "XDG_CONFIG_HOME"};
  testing::TempDir dir_;
};

TEST_F(CliConfigTest, FlagsThenEnvironmentThenConfigFileForEachSetting) {
  const std::string file = dir_.Join("conf/config.json");
  Write(file, R"({"scheduler": "file:1", "api_key": "key-file", "tls_ca": "ca.pem",
                  "tls_server_name": "name-file"})");
  EndpointFlags flags;
  flags.config_file = file;
  // Only the file.
  auto e = ResolveEndpoint("scheduler", flags);
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->channel.target, "file:1");
  EXPECT_EQ(e->api_key, "key-file");
  EXPECT_EQ(e->channel.tls_ca_file, dir_.Join("conf/ca.pem"));  // relative to the file
  EXPECT_EQ(e->channel.tls_server_name, "name-file");
  // The environment beats the file, setting by setting.
  setenv("TUNEFLEET_SCHEDULER", "env:2", 1);
  setenv("TUNEFLEET_TLS_SERVER_NAME", "name-env", 1);
  e = ResolveEndpoint("scheduler", flags);
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->channel.target, "env:2");
  EXPECT_EQ(e->api_key, "key-file");
  EXPECT_EQ(e->channel.tls_server_name, "name-env");
  // Flags beat both.
  flags.target = "flag:3";
  flags.api_key = "key-flag";
  flags.tls.tls_ca_file = "/flag/ca.pem";
  e = ResolveEndpoint("scheduler", flags);
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->channel.target, "flag:3");
  EXPECT_EQ(e->api_key, "key-flag");
  EXPECT_EQ(e->channel.tls_ca_file, "/flag/ca.pem");
  EXPECT_EQ(e->channel.tls_server_name, "name-env");
}

TEST_F(CliConfigTest, WhichConfigFile) {
  const std::string fleet = dir_.Join("fleet");
  ClientConfig local;
  local.addresses["scheduler"] = "fleet:1";
  local.api_key = "key-fleet";
  std::filesystem::create_directories(fleet);
  ASSERT_THAT(WriteClientConfig(fleet + "/config.json", local), IsOk());
  EXPECT_EQ(std::filesystem::status(fleet + "/config.json").permissions() &
                std::filesystem::perms::group_read,
            std::filesystem::perms::none)
      << "it holds a key";
  Write(dir_.Join("xdg/tunefleet/config.json"), R"({"scheduler": "user:4", "api_key": "key-user"})");
  Write(dir_.Join("env.json"), R"({"scheduler": "env:2", "api_key": "key-env"})");
  Write(dir_.Join("flag.json"), R"({"scheduler": "flag:3"})");

  EndpointFlags flags;
  // Nothing named: the user's config.
  EXPECT_EQ(ResolveEndpoint("scheduler", flags)->channel.target, "user:4");
  // A fleet dir with a config.json comes before it.
  flags.fleet_dir = fleet;
  EXPECT_EQ(ResolveEndpoint("scheduler", flags)->channel.target, "fleet:1");
  EXPECT_EQ(ResolveEndpoint("scheduler", flags)->api_key, "key-fleet");
  // TUNEFLEET_CONFIG before that, --config before everything.
  setenv("TUNEFLEET_CONFIG", dir_.Join("env.json").c_str(), 1);
  EXPECT_EQ(ResolveEndpoint("scheduler", flags)->channel.target, "env:2");
  flags.config_file = dir_.Join("flag.json");
  auto e = ResolveEndpoint("scheduler", flags);
  // One file is read, not a merge: flag.json has no key.
  EXPECT_THAT(e, StatusIs(absl::StatusCode::kInvalidArgument,
                          ::testing::AllOf(HasSubstr("no API key"), HasSubstr("flag.json"))));
  // A named file that is missing is an error naming it.
  flags.config_file = dir_.Join("missing.json");
  EXPECT_THAT(ResolveEndpoint("scheduler", flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--config")));
  flags.config_file.clear();
  setenv("TUNEFLEET_CONFIG", dir_.Join("missing.json").c_str(), 1);
  EXPECT_THAT(ResolveEndpoint("scheduler", flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TUNEFLEET_CONFIG")));
  // A broken file names the file.
  Write(dir_.Join("bad.json"), R"({"scheduler": 7})");
  setenv("TUNEFLEET_CONFIG", dir_.Join("bad.json").c_str(), 1);
  EXPECT_THAT(ResolveEndpoint("scheduler", flags),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.json")));
}

TEST_F(CliConfigTest, AFleetDirFromBeforeConfigJson) {
  const std::string fleet = dir_.Join("old");
  Write(fleet + "/fleet.json", R"({"services": {"dataset": {"address": "old:5"}}})");
  Write(fleet + "/credentials.json", R"({"tenant_key": "key-old"})");
  EndpointFlags flags;
  flags.fleet_dir = fleet;
  auto e = ResolveEndpoint("dataset", flags);
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(e->channel.target, "old:5");
  EXPECT_EQ(e->api_key, "key-old");
}

// The progress display when standard error is not a terminal: whole lines,
// one per tenth at most, the last at 100%, no carriage returns.
TEST(Progress, PlainLinesWhenNotATerminal) {
  std::ostringstream out;
  ProgressBar bar("upload data.jsonl", 1000, &out, /*tty=*/false);
  for (int done = 0; done <= 1000; done += 50) bar.Update(done);
  bar.Finish();
  std::string text = out.str();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_THAT(text, HasSubstr("upload data.jsonl: 50% (500 B of 1000 B)"));
  EXPECT_THAT(text, HasSubstr("upload data.jsonl: 100% 1000 B in "));
  int lines = 0;
  for (char c : text) lines += c == '\n';
  EXPECT_EQ(lines, 10);  // 10%..90%, then the end
  std::ostringstream tty;
  ProgressBar redrawn("x", 100, &tty, /*tty=*/true);
  redrawn.Update(50);
  redrawn.Finish();
  EXPECT_THAT(tty.str(), HasSubstr("\r"));
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
}

}  // namespace
}  // namespace tunefleet::cli
