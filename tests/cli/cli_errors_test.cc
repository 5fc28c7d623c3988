// The tunefleet command's error paths, run as a real process: each failure
// gets its documented exit code (cli/commands.h) and a message naming the
// problem.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "cli/fleet.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet {
namespace {

using ::testing::HasSubstr;

struct Result {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

Result RunCli(const std::string& args) {
  std::string cmd = absl::StrCat(TUNEFLEET_BIN_DIR, "/tunefleet ", args, " 2>&1");
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A port nothing listens on: bind, read the port, close.
std::string ClosedAddress() { return "127.0.0.1:1"; }

TEST(CliErrors, FleetDownIsExitCode6ForEveryGroup) {
  std::string target = absl::StrCat("--target ", ClosedAddress(), " --api-key k");
  for (const char* cmd :
       {"files list", "jobs list", "jobs get ftjob-x", "models list", "deployments list",
        "chat --deployment dep-x --message hi"}) {
    Result r = RunCli(absl::StrCat(cmd, " ", target));
    EXPECT_EQ(r.exit_code, 6) << cmd << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr("UNAVAILABLE")) << cmd;
  }
}

TEST(CliErrors, NoAddressNamesTheServiceAndHowToGiveIt) {
  testing::TempDir dir;
  Result r = RunCli(absl::StrCat("models list --fleet ", dir.path()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no address for the scheduler service"));
  EXPECT_THAT(r.output, HasSubstr("TUNEFLEET_SCHEDULER"));
  r = RunCli(absl::StrCat("chat --deployment d --message hi --fleet ", dir.path()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no address for the serving service"));
}

TEST(CliErrors, BadArgumentsAreUsageErrors) {
  std::string target = absl::StrCat(" --target ", ClosedAddress(), " --api-key k");
  Result r = RunCli("jobs create --model m --training-file file-1 --method bogus" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--method must be supervised or dpo, not 'bogus'"));
  r = RunCli("jobs create --model m --training-file file-1 --method full" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("(the adapter is --adapter)"));
  r = RunCli("jobs create --model m --training-file file-1 --adapter half" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--adapter must be lora or full, not 'half'"));
  r = RunCli("jobs create --model m --training-file file-1 --lr-scheduler wavy" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--lr-scheduler must be cosine, linear or constant"));
  r = RunCli("jobs create --model m --training-file file-1 --packing maybe" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--packing must be true or false, not 'maybe'"));
  r = RunCli("jobs create --model m --training-file file-1 --dpo-beta 0.2" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--dpo-beta applies only to --method dpo"));
  r = RunCli("jobs create --model m --training-file file-1 --task poetry" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--task must be chat or classification"));
  r = RunCli("jobs list --state sleeping" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("unknown state 'sleeping'"));
  r = RunCli("models list --kind huge" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--kind must be base or fine-tuned"));
  r = RunCli("files upload x.jsonl --purpose lunch" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--purpose must be fine-tune or validation"));
  // Missing required options and unknown verbs are usage errors too.
  r = RunCli("jobs create" + target);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--model"));
  r = RunCli("jobs explode");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(CliErrors, UnknownIdAndBadKeyAgainstARealFleet) {
  testing::TempDir dir;
  cli::LocalFleetOptions options;
  options.data_dir = dir.Join("fleet");
  options.bin_dir = TUNEFLEET_BIN_DIR;
  auto fleet = cli::LocalFleet::Start(options);
  ASSERT_THAT(fleet, testing::IsOk());
  std::string f = absl::StrCat(" --fleet ", options.data_dir);

  Result r = RunCli("files get file-doesnotexist" + f);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_THAT(r.output, HasSubstr("file-doesnotexist"));
  r = RunCli("files list --api-key not-a-key" + f);
  EXPECT_EQ(r.exit_code, 5) << r.output;
  EXPECT_THAT(r.output, HasSubstr("UNAUTHENTICATED"));
  r = RunCli("files upload /nonexistent/data.jsonl" + f);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_THAT(r.output, HasSubstr("/nonexistent/data.jsonl"));
}

}  // namespace
}  // namespace tunefleet
