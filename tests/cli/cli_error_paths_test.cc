// Every CLI command's error paths, one table row per command and error kind,
// each run as the real `tunefleet` process against real services: a local
// fleet (dataset, scheduler, trainer agent, serving replica as processes on
// loopback) with a tiny base model, one uploaded file and one deployment; a
// closed port for "fleet down". Each row checks the documented exit code
// (cli/commands.h: 2 bad argument, 3 not found, 4 refused, 5 bad key,
// 6 unreachable) and that standard error names the problem (the id, the
// field, the address).
#include <sys/wait.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cli/fleet.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet {
namespace {

using ::testing::HasSubstr;

enum class Kind { kFleetDown, kUnknownId, kBadKey, kBadArgument, kRefused };

std::string KindName(Kind k) {
  switch (k) {
    case Kind::kFleetDown: return "FleetDown";
    case Kind::kUnknownId: return "UnknownId";
    case Kind::kBadKey: return "BadKey";
    case Kind::kBadArgument: return "BadArgument";
    case Kind::kRefused: return "Refused";
  }
  return "?";
}

int ExpectedExit(Kind k) {
  switch (k) {
    case Kind::kFleetDown: return 6;
    case Kind::kUnknownId: return 3;
    case Kind::kBadKey: return 5;
    case Kind::kBadArgument: return 2;
    case Kind::kRefused: return 4;
  }
  return -1;
}

constexpr char kClosed[] = "127.0.0.1:1";

struct Row {
  std::string command;  // "files get": the command under test
  Kind kind;
  // Arguments after `tunefleet`; {file}, {dep}, {sample}, {fleet}, {tmp}
  // are filled in. The kind's address/key flags are appended unless
  // `own_flags`.
  std::string args;
  // What standard error must name.
  std::vector<std::string> names;
  bool own_flags = false;
};

// The table. Commands without an id have no unknown-id row; a missing
// required id is their bad-argument row.
std::vector<Row> Rows() {
  const std::vector<std::string> down = {kClosed};
  const std::vector<std::string> key = {"API key"};
  std::vector<Row> rows = {
      // files
      {"files upload", Kind::kFleetDown, "files upload {sample}", down},
      {"files upload", Kind::kBadKey, "files upload {sample}", key},
      {"files upload", Kind::kUnknownId, "files upload /nonexistent/data.jsonl",
       {"/nonexistent/data.jsonl"}},
      {"files upload", Kind::kBadArgument, "files upload {sample} --purpose lunch",
       {"--purpose", "lunch"}},
      {"files list", Kind::kFleetDown, "files list", down},
      {"files list", Kind::kBadKey, "files list", key},
      {"files list", Kind::kBadArgument, "files list --bogus", {"--bogus"}},
      {"files get", Kind::kFleetDown, "files get {file}", down},
      {"files get", Kind::kBadKey, "files get {file}", key},
      {"files get", Kind::kUnknownId, "files get file-nope0", {"file-nope0"}},
      {"files get", Kind::kBadArgument, "files get", {"id"}},
      {"files validate", Kind::kFleetDown, "files validate {file}", down},
      {"files validate", Kind::kBadKey, "files validate {file}", key},
      {"files validate", Kind::kUnknownId, "files validate file-nope0", {"file-nope0"}},
      {"files validate", Kind::kBadArgument, "files validate {file} --epochs -1", {"epochs"}},
      {"files split", Kind::kFleetDown, "files split {file}", down},
      {"files split", Kind::kBadKey, "files split {file}", key},
      {"files split", Kind::kUnknownId, "files split file-nope0", {"file-nope0"}},
      {"files split", Kind::kBadArgument, "files split {file} --ratio 0.9",
       {"validation_ratio", "0.9"}},
      {"files download", Kind::kFleetDown, "files download {file}", down},
      {"files download", Kind::kBadKey, "files download {file}", key},
      {"files download", Kind::kUnknownId, "files download file-nope0", {"file-nope0"}},
      {"files download", Kind::kBadArgument, "files download {file} -o /nonexistent/dir/out",
       {"--output", "/nonexistent/dir/out"}},
      {"files delete", Kind::kFleetDown, "files delete {file}", down},
      {"files delete", Kind::kBadKey, "files delete {file}", key},
      {"files delete", Kind::kUnknownId, "files delete file-nope0", {"file-nope0"}},
      {"files delete", Kind::kBadArgument, "files delete", {"id"}},
      // jobs
      {"jobs create", Kind::kFleetDown, "jobs create --model tiny-base --training-file {file}",
       down},
      {"jobs create", Kind::kBadKey, "jobs create --model tiny-base --training-file {file}", key},
      {"jobs create", Kind::kUnknownId,
       "jobs create --model tiny-base --training-file file-nope0", {"file-nope0"}},
      {"jobs create", Kind::kBadArgument, "jobs create --model nope-base --training-file {file}",
       {"base_model", "nope-base"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --method bogus",
       {"--method", "bogus"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --adapter half", {"--adapter", "half"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --learning-rate 0.001 "
       "--learning-rate-multiplier 2",
       {"hyperparameters.learning_rate", "hyperparameters.learning_rate_multiplier", "not both"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --weight-decay 2 "
       "--keep-checkpoints -1",
       {"hyperparameters.weight_decay", "hyperparameters.keep_checkpoints"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --method dpo --dpo-beta 20",
       {"method.dpo.beta", "(0, 10]"}},
      {"jobs create", Kind::kBadArgument,
       "jobs create --model tiny-base --training-file {file} --method dpo --task classification",
       {"task", "method dpo needs the chat task"}},
      {"jobs list", Kind::kFleetDown, "jobs list", down},
      {"jobs list", Kind::kBadKey, "jobs list", key},
      {"jobs list", Kind::kBadArgument, "jobs list --state sleeping", {"--state", "sleeping"}},
      {"jobs events", Kind::kBadArgument, "jobs events ftjob-nope0 --after -1",
       {"after_sequence"}},
      {"jobs events --follow", Kind::kFleetDown, "jobs events ftjob-nope0 --follow", down},
      {"jobs events --follow", Kind::kBadKey, "jobs events ftjob-nope0 --follow", key},
      {"jobs events --follow", Kind::kUnknownId, "jobs events ftjob-nope0 --follow",
       {"ftjob-nope0"}},
      {"jobs metrics", Kind::kBadArgument, "jobs metrics ftjob-nope0 --plot /nonexistent/dir/c.svg",
       {"--plot", "/nonexistent/dir/c.svg"}},
      // models
      {"models list", Kind::kFleetDown, "models list", down},
      {"models list", Kind::kBadKey, "models list", key},
      {"models list", Kind::kBadArgument, "models list --kind huge", {"--kind", "huge"}},
      {"models get", Kind::kUnknownId, "models get nope-base", {"nope-base"}},
      {"models delete", Kind::kRefused, "models delete tiny-base", {"tiny-base", "base model"}},
      {"models download", Kind::kFleetDown, "models download ft:tiny-base:x:ftjob-nope0", down},
      {"models download", Kind::kBadKey, "models download ft:tiny-base:x:ftjob-nope0", key},
      {"models download", Kind::kUnknownId,
       "models download ft:tiny-base:x:ftjob-nope0 -o {tmp}/m.tar", {"ft:tiny-base:x:ftjob-nope0"}},
      {"models download", Kind::kRefused, "models download tiny-base -o {tmp}/m.tar",
       {"tiny-base", "base model"}},
      {"models download", Kind::kBadArgument, "models download", {"id"}},
      // deployments
      {"deployments create", Kind::kFleetDown, "deployments create --model tiny-base", down},
      {"deployments create", Kind::kBadKey, "deployments create --model tiny-base", key},
      {"deployments create", Kind::kUnknownId,
       "deployments create --model ft:tiny-base:x:ftjob-nope0", {"ft:tiny-base:x:ftjob-nope0"}},
      {"deployments create", Kind::kBadArgument, "deployments create --model tiny-base --replicas 100",
       {"replicas"}},
      {"deployments create", Kind::kBadArgument, "deployments create --model nope-base",
       {"nope-base"}},
      {"deployments update", Kind::kFleetDown, "deployments update {dep} --replicas 1", down},
      {"deployments update", Kind::kBadKey, "deployments update {dep} --replicas 1", key},
      {"deployments update", Kind::kUnknownId, "deployments update dep-nope0 --replicas 1",
       {"dep-nope0"}},
      {"deployments update", Kind::kBadArgument, "deployments update {dep} --model nope-base",
       {"nope-base"}},
      {"deployments update", Kind::kBadArgument, "deployments update {dep} --filter gore",
       {"--filter", "gore"}},
      {"deployments update", Kind::kBadArgument, "deployments update {dep}",
       {"nothing to change"}},
      {"deployments list", Kind::kFleetDown, "deployments list", down},
      {"deployments list", Kind::kBadKey, "deployments list", key},
      {"deployments list", Kind::kBadArgument, "deployments list --bogus", {"--bogus"}},
      // chat: one question (streamed and not) against the real replica
      {"chat", Kind::kFleetDown, "chat --deployment {dep} --message hi", down},
      {"chat", Kind::kBadKey, "chat --deployment {dep} --message hi", key},
      {"chat", Kind::kUnknownId, "chat --deployment dep-nope0 --message hi", {"dep-nope0"}},
      {"chat --no-stream", Kind::kUnknownId, "chat --deployment dep-nope0 --message hi --no-stream",
       {"dep-nope0"}},
      {"chat", Kind::kBadArgument, "chat --deployment {dep} --message hi --temperature -1",
       {"temperature", "-1"}},
      {"chat --no-stream", Kind::kBadArgument,
       "chat --deployment {dep} --message hi --max-tokens -5 --no-stream", {"max_tokens", "-5"}},
      {"chat", Kind::kBadArgument, "chat --message hi", {"--deployment"}},
      // commands that are not API calls
      {"health", Kind::kFleetDown, "health 127.0.0.1:1", down, true},
      {"health", Kind::kBadArgument, "health", {"target"}, true},
      {"local status", Kind::kUnknownId, "local status --data-dir {tmp}/no-fleet",
       {"{tmp}/no-fleet"}, true},
      {"local down", Kind::kUnknownId, "local down --data-dir {tmp}/no-fleet", {"{tmp}/no-fleet"},
       true},
      {"local up", Kind::kBadArgument, "local up --base-port many", {"--base-port"}, true},
      {"keys create", Kind::kBadArgument, "keys create --keys-file {tmp}/keys.txt", {"--tenant"},
       true},
  };
  // The commands that take one id, with the same four rows each.
  struct IdCommand {
    std::string command;
    std::string unknown;  // an id that does not exist
  };
  for (const IdCommand& c : std::vector<IdCommand>{{"jobs get", "ftjob-nope0"},
                                                   {"jobs events", "ftjob-nope0"},
                                                   {"jobs metrics", "ftjob-nope0"},
                                                   {"jobs cancel", "ftjob-nope0"},
                                                   {"jobs pause", "ftjob-nope0"},
                                                   {"jobs resume", "ftjob-nope0"},
                                                   {"jobs checkpoints", "ftjob-nope0"},
                                                   {"models get", "ft:tiny-base:x:ftjob-nope0"},
                                                   {"models delete", "ft:tiny-base:x:ftjob-nope0"},
                                                   {"deployments get", "dep-nope0"},
                                                   {"deployments delete", "dep-nope0"}}) {
    std::string with_id = absl::StrCat(c.command, " ", c.unknown);
    rows.push_back({c.command, Kind::kFleetDown, with_id, down});
    rows.push_back({c.command, Kind::kBadKey, with_id, key});
    rows.push_back({c.command, Kind::kUnknownId, with_id, {c.unknown}});
    // The bad argument of jobs events/metrics is above; the others have
    // only their id to get wrong: leaving it out is a usage error naming it.
    if (c.command != "jobs events" && c.command != "jobs metrics") {
      rows.push_back({c.command, Kind::kBadArgument, c.command, {"id"}});
    }
  }
  return rows;
}

struct Result {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One shared fleet for every row (starting it is most of the run time).
class CliErrorPaths : public ::testing::TestWithParam<Row> {
 public:
  static void SetUpTestSuite() {
    // A developer's environment or config must not redirect the CLI.
    for (const char* v : {"TUNEFLEET_API_KEY", "TUNEFLEET_DATASET", "TUNEFLEET_SCHEDULER",
                          "TUNEFLEET_SERVING", "TUNEFLEET_CONFIG", "TUNEFLEET_TLS_CA"}) {
      unsetenv(v);
    }
    dir_ = new testing::TempDir();
    setenv("HOME", dir_->path().c_str(), 1);
    setenv("XDG_CONFIG_HOME", dir_->Join("xdg").c_str(), 1);
    fleet_dir_ = dir_->Join("fleet");
    // A tiny base model the scheduler lists and the replica serves.
    std::filesystem::create_directories(fleet_dir_ + "/models");
    Result init = Run(absl::StrCat(TUNEFLEET_BIN_DIR, "/tunefleet-model init-tiny --out ",
                                   fleet_dir_, "/models/tiny-base --seed 1"),
                      false);
    ASSERT_EQ(init.exit_code, 0) << init.err;
    cli::LocalFleetOptions options;
    options.data_dir = fleet_dir_;
    options.bin_dir = TUNEFLEET_BIN_DIR;
    auto fleet = cli::LocalFleet::Start(options);
    ASSERT_THAT(fleet, testing::IsOk());
    fleet_ = fleet->release();
    Result up = Run(Fill("tunefleet files upload {sample} --fleet {fleet}"), true);
    ASSERT_EQ(up.exit_code, 0) << up.err;
    file_id_ = up.out.substr(0, up.out.find(' '));
    Result dep = Run(Fill("tunefleet deployments create --model tiny-base --wait --fleet {fleet}"),
                     true);
    ASSERT_EQ(dep.exit_code, 0) << dep.err << dep.out;
    dep_id_ = dep.out.substr(0, dep.out.find(' '));
  }
  static void TearDownTestSuite() {
    if (fleet_ != nullptr) {
      EXPECT_THAT(fleet_->Stop(absl::Seconds(30)), testing::IsOk());
    }
    delete fleet_;
    fleet_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }

 protected:
  static std::string Fill(std::string s) {
    return absl::StrReplaceAll(
        s, {{"{file}", file_id_},
            {"{dep}", dep_id_},
            {"{sample}", std::string(TUNEFLEET_SOURCE_DIR) + "/examples/data/chat_sample.jsonl"},
            {"{fleet}", fleet_dir_},
            {"{tmp}", dir_->path()}});
  }
  // Runs a command line; `tunefleet` at its start is the built binary.
  static Result Run(std::string command, bool cli) {
    if (cli) command = absl::StrCat(TUNEFLEET_BIN_DIR, "/", command);
    std::string out = dir_->Join("out.txt"), err = dir_->Join("err.txt");
    int status = std::system(absl::StrCat(command, " >", out, " 2>", err, " </dev/null").c_str());
    Result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadAll(out);
    r.err = ReadAll(err);
    return r;
  }

  static testing::TempDir* dir_;
  static std::string fleet_dir_, file_id_, dep_id_;
  static cli::LocalFleet* fleet_;
};

testing::TempDir* CliErrorPaths::dir_ = nullptr;
std::string CliErrorPaths::fleet_dir_, CliErrorPaths::file_id_, CliErrorPaths::dep_id_;
cli::LocalFleet* CliErrorPaths::fleet_ = nullptr;

TEST_P(CliErrorPaths, ExitCodeAndMessage) {
  ASSERT_FALSE(file_id_.empty());
  ASSERT_FALSE(dep_id_.empty());
  const Row& row = GetParam();
  std::string args = absl::StrCat("tunefleet ", row.args);
  if (!row.own_flags) {
    switch (row.kind) {
      case Kind::kFleetDown:
        absl::StrAppend(&args, " --target ", kClosed, " --api-key tf-any");
        break;
      case Kind::kBadKey:
        absl::StrAppend(&args, " --fleet {fleet} --api-key tf-not-a-key");
        break;
      default:
        absl::StrAppend(&args, " --fleet {fleet}");
    }
  }
  Result r = Run(Fill(args), true);
  EXPECT_EQ(r.exit_code, ExpectedExit(row.kind))
      << Fill(args) << "\nstderr: " << r.err << "\nstdout: " << r.out;
  for (const std::string& name : row.names) {
    EXPECT_THAT(r.err, HasSubstr(Fill(name))) << Fill(args);
  }
}

std::string RowName(const ::testing::TestParamInfo<Row>& info) {
  std::string name = absl::StrCat(info.param.command, "_", KindName(info.param.kind), "_",
                                  info.index);
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(EveryCommand, CliErrorPaths, ::testing::ValuesIn(Rows()), RowName);

// The table covers every command of the CLI with each error kind that
// applies to it.
TEST(CliErrorPathsTable, CoversEveryCommand) {
  std::map<std::string, std::set<Kind>> kinds;
  for (const Row& r : Rows()) {
    std::string command = r.command.substr(0, r.command.find(" --"));
    kinds[command].insert(r.kind);
  }
  const std::vector<std::string> api = {
      "files upload", "files list", "files get", "files validate", "files split",
      "files download", "files delete", "jobs create", "jobs list", "jobs get", "jobs events",
      "jobs metrics", "jobs cancel", "jobs pause", "jobs resume", "jobs checkpoints",
      "models list", "models get", "models download", "models delete", "deployments create",
      "deployments update", "deployments list",
      "deployments get", "deployments delete", "chat"};
  for (const std::string& c : api) {
    EXPECT_TRUE(kinds[c].count(Kind::kFleetDown)) << c;
    EXPECT_TRUE(kinds[c].count(Kind::kBadKey)) << c;
    EXPECT_TRUE(kinds[c].count(Kind::kBadArgument)) << c;
    if (c.find(" list") == std::string::npos) {
      EXPECT_TRUE(kinds[c].count(Kind::kUnknownId)) << c;
    }
  }
}

}  // namespace
}  // namespace tunefleet
