// The worker supervisor with real child processes (small shell scripts that
// speak on the report fd): lines in order, exits, kills that reach the whole
// process group, the report timeout for a hung worker, SIGTERM handling, and
// the death signal when the supervising process is SIGKILLed.
#include "services/trainer/agent/worker_process.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/base/subprocess.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::trainer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

constexpr absl::Duration kDeadline = absl::Seconds(20);

// Collects what the supervisor delivers; tests wait on its state.
struct Collector {
  absl::Mutex mu;
  std::vector<std::string> lines ABSL_GUARDED_BY(mu);
  std::optional<WorkerExit> exit ABSL_GUARDED_BY(mu);
  int exits ABSL_GUARDED_BY(mu) = 0;

  WorkerProcess::LineCallback OnLine() {
    return [this](std::string line) {
      absl::MutexLock lock(&mu);
      EXPECT_FALSE(exit.has_value()) << "a line after the exit";
      lines.push_back(std::move(line));
    };
  }
  WorkerProcess::ExitCallback OnExit() {
    return [this](const WorkerExit& e) {
      absl::MutexLock lock(&mu);
      exit = e;
      ++exits;
    };
  }
  bool WaitForLines(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return lines.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), kDeadline);
  }
  std::vector<std::string> Lines() {
    absl::MutexLock lock(&mu);
    return lines;
  }
};

class WorkerProcessTest : public ::testing::Test {
 protected:
  // Writes an executable /bin/sh script; its report fd is 3.
  std::string Script(const std::string& name, const std::string& body) {
    std::string path = dir_.Join(name);
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    chmod(path.c_str(), 0755);
    return path;
  }
  absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const std::string& script,
                                                       WorkerProcessOptions options = {}) {
    options.argv = {script};
    return WorkerProcess::Start(options, collector_.OnLine(), collector_.OnExit());
  }
  // Reads a pid a script wrote, waiting until it is there.
  pid_t ReadPid(const std::string& path) {
    absl::Time deadline = absl::Now() + kDeadline;
    while (absl::Now() < deadline) {
      std::ifstream in(path);
      std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      int pid = 0;
      if (!s.empty() && s.back() == '\n' && absl::SimpleAtoi(absl::StripAsciiWhitespace(s), &pid)) {
        return pid;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    ADD_FAILURE() << "no pid in " << path;
    return -1;
  }

  testing::TempDir dir_;
  Collector collector_;
};

// True once `pid` is gone or a zombie (dead, not yet reaped by its new
// parent), waiting up to the deadline.
bool WaitDead(pid_t pid) {
  absl::Time deadline = absl::Now() + kDeadline;
  while (absl::Now() < deadline) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    if (!stat) return true;
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    size_t paren = content.rfind(')');
    if (paren != std::string::npos && paren + 2 < content.size() &&
        (content[paren + 2] == 'Z' || content[paren + 2] == 'X')) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

TEST_F(WorkerProcessTest, DeliversLinesInOrderThenTheExit) {
  auto w = Start(Script("w.sh", "printf 'one\\ntwo\\n' >&3; printf 'three' >&3; exit 0"));
  ASSERT_THAT(w, IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->success());
  EXPECT_EQ(exit->Describe(), "exited 0");
  EXPECT_THAT(collector_.Lines(), ElementsAre("one", "two", "three"));
  absl::MutexLock lock(&collector_.mu);
  EXPECT_EQ(collector_.exits, 1);
}

TEST_F(WorkerProcessTest, ReportsANonzeroExit) {
  auto w = Start(Script("w.sh", "printf 'started\\n' >&3; exit 3"));
  ASSERT_THAT(w, IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_FALSE(exit->success());
  EXPECT_EQ(exit->Describe(), "exited 3");
  EXPECT_THAT(collector_.Lines(), ElementsAre("started"));
}

TEST_F(WorkerProcessTest, PassesEnvironmentOverrides) {
  setenv("TF_TEST_OVERRIDDEN", "parent", 1);
  WorkerProcessOptions o;
  o.env = {"OMP_WAIT_POLICY=PASSIVE", "TF_TEST_OVERRIDDEN=child"};
  auto w = Start(Script("w.sh", "printf '%s %s\\n' \"$OMP_WAIT_POLICY\" \"$TF_TEST_OVERRIDDEN\" >&3"),
                 o);
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE((*w)->WaitForExit(kDeadline).has_value());
  EXPECT_THAT(collector_.Lines(), ElementsAre("PASSIVE child"));
}

TEST_F(WorkerProcessTest, SigkillReachesTheWholeGroup) {
  std::string pidfile = dir_.Join("grandchild.pid");
  auto w = Start(Script("w.sh", absl::StrCat("sleep 1000 & echo $! > ", pidfile,
                                             "; printf 'ready\\n' >&3; wait")));
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE(collector_.WaitForLines(1));
  pid_t grandchild = ReadPid(pidfile);
  ASSERT_GT(grandchild, 0);
  ASSERT_THAT((*w)->Signal(SIGKILL), IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->Describe(), "killed by signal 9");
  EXPECT_TRUE(WaitDead(grandchild));
  // Reaped: no signal can reach a recycled pid.
  EXPECT_THAT((*w)->Signal(SIGKILL), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(WorkerProcessTest, ExitingWorkerTakesItsGroupWithIt) {
  std::string pidfile = dir_.Join("left.pid");
  auto w = Start(Script("w.sh", absl::StrCat("sleep 1000 >/dev/null & echo $! > ", pidfile,
                                             "; exit 0")));
  ASSERT_THAT(w, IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->success());
  EXPECT_TRUE(WaitDead(ReadPid(pidfile)));
}

TEST_F(WorkerProcessTest, SigtermLetsTheWorkerReportAndExitCleanly) {
  auto w = Start(Script("w.sh",
                        "trap 'printf \"stopped\\n\" >&3; exit 0' TERM\n"
                        "printf 'ready\\n' >&3\n"
                        "sleep 1000 & wait"));
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE(collector_.WaitForLines(1));
  ASSERT_THAT((*w)->Signal(SIGTERM), IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->success()) << exit->Describe();
  EXPECT_THAT(collector_.Lines(), ElementsAre("ready", "stopped"));
}

TEST_F(WorkerProcessTest, ASilentWorkerIsKilledAsHung) {
  WorkerProcessOptions o;
  o.report_timeout = absl::Milliseconds(300);
  absl::Time start = absl::Now();
  auto w = Start(Script("w.sh", "printf 'started\\n' >&3; exec sleep 1000"), o);
  ASSERT_THAT(w, IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->hung);
  EXPECT_FALSE(exit->success());
  EXPECT_THAT(exit->Describe(), HasSubstr("hung: no report for"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_THAT(collector_.Lines(), ElementsAre("started"));
}

TEST_F(WorkerProcessTest, AWorkerThatReportsIsNotHung) {
  WorkerProcessOptions o;
  o.report_timeout = absl::Milliseconds(400);
  // 8 lines 100 ms apart: 800 ms in all, never 400 ms silent.
  auto w = Start(Script("w.sh", "for i in 1 2 3 4 5 6 7 8; do printf \"$i\\n\" >&3; sleep 0.1; done"),
                 o);
  ASSERT_THAT(w, IsOk());
  auto exit = (*w)->WaitForExit(kDeadline);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->success()) << exit->Describe();
  EXPECT_EQ(collector_.Lines().size(), 8u);
}

TEST_F(WorkerProcessTest, AMissingBinaryIsNotFound) {
  WorkerProcessOptions o;
  o.argv = {dir_.Join("no-such-worker")};
  EXPECT_THAT(WorkerProcess::Start(o, collector_.OnLine(), collector_.OnExit()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no-such-worker")));
}

TEST_F(WorkerProcessTest, WritesStdoutAndStderrToTheLogFile) {
  WorkerProcessOptions o;
  o.log_file = dir_.Join("worker.log");
  auto w = Start(Script("w.sh", "echo out; echo err >&2"), o);
  ASSERT_THAT(w, IsOk());
  ASSERT_TRUE((*w)->WaitForExit(kDeadline).has_value());
  std::ifstream in(o.log_file);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "out\nerr\n");
}

TEST_F(WorkerProcessTest, DestructorKillsARunningWorker) {
  std::string pidfile = dir_.Join("w.pid");
  pid_t pid;
  {
    auto w = Start(Script("w.sh", absl::StrCat("echo $$ > ", pidfile, "; exec sleep 1000")));
    ASSERT_THAT(w, IsOk());
    pid = ReadPid(pidfile);
  }
  EXPECT_TRUE(WaitDead(pid));
}

// The supervising process dies by SIGKILL (no destructor runs): the death
// signal still takes the worker down.
TEST_F(WorkerProcessTest, WorkerDiesWithItsAgent) {
  std::string pidfile = dir_.Join("w.pid");
  std::string script = Script("w.sh", absl::StrCat("echo $$ > ", pidfile, "; exec sleep 1000"));
  auto agent = Subprocess::Start({SUPERVISOR_HELPER, script});
  ASSERT_THAT(agent, IsOk());
  pid_t worker = ReadPid(pidfile);
  ASSERT_GT(worker, 0);
  ASSERT_THAT(agent->Signal(SIGKILL), IsOk());
  ASSERT_THAT(agent->Wait(kDeadline), IsOk());
  EXPECT_TRUE(WaitDead(worker));
}

}  // namespace
}  // namespace tunefleet::trainer
