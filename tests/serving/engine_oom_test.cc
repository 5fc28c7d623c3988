// An out-of-memory step shrinks the batch, it does not kill the replica: the
// test runs itself again as a child process whose address space is capped
// (RLIMIT_AS) a little above what the loaded engine uses, so that eight long
// prompts prefilled together cannot be allocated (libtorch's CPU allocator
// fails) while smaller steps can; every request still completes, with the
// answer it gets alone, and the engine reports the shrink.
#include <spawn.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/tiny_model.h"
#include "services/serving/engine/engine.h"
#include "tests/testing/temp_dir.h"

extern char** environ;

namespace tunefleet::serving {
namespace {

constexpr char kChildEnv[] = "TUNEFLEET_OOM_CHILD";

int64_t VmSizeBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoll(line.substr(7)) * 1024;
  }
  return 0;
}

std::vector<int64_t> Prompt(int seed, int n) {
  std::vector<int64_t> p;
  for (int i = 0; i < n; ++i) p.push_back(100 + (seed * 7919 + i * 104729) % 30000);
  return p;
}

EngineRequest Req(std::vector<int64_t> prompt) {
  EngineRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.max_new_tokens = 4;
  r.sampling.stop_token_ids = {32063};  // keeps answers from ending early
  return r;
}

// Runs in the child only.
TEST(EngineOomChild, ABatchThatDoesNotFitShrinksAndEveryRequestCompletes) {
  if (!getenv(kChildEnv)) GTEST_SKIP() << "runs as the parent's child";
  at::set_num_threads(1);
  testing::TempDir dir;
  // A wide MLP: a step's activations grow with its tokens (8 x 400 tokens
  // x 2 x 8192 floats: about 200 MB for the gate/up projection alone).
  model::TinyModelOptions mo;
  mo.seed = 9;
  mo.hidden_size = 128;
  mo.intermediate_size = 8192;
  mo.max_position_embeddings = 1024;
  ASSERT_TRUE(model::WriteTinyPhi3(dir.Join("base"), mo).ok());
  auto decoder = model::Decoder::Load(dir.Join("base"));
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  EngineOptions o;
  o.threads = 1;
  o.max_batch = 8;
  o.max_context = 1024;
  o.step_token_budget = 8 * 512;
  o.kv_cache_bytes = int64_t{64} << 20;
  auto engine = Engine::Create(*std::move(decoder), o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  constexpr int kRequests = 8, kPromptTokens = 400;
  // Alone (one row of 400 tokens: about 30 MB of activations).
  std::vector<std::vector<int64_t>> alone;
  for (int i = 0; i < kRequests; ++i) {
    auto c = (*engine)->Generate(Req(Prompt(i, kPromptTokens)));
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE(c->status.ok()) << c->status;
    alone.push_back(c->tokens);
  }
  // Room for a step of about a quarter of the batch, not for all of it.
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(VmSizeBytes() + (int64_t{160} << 20));
  ASSERT_EQ(setrlimit(RLIMIT_AS, &lim), 0);

  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::vector<Completion> got(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    EngineRequest r = Req(Prompt(i, kPromptTokens));
    r.on_done = [&, i](const Completion& c) {
      std::lock_guard<std::mutex> lock(mu);
      got[i] = c;
      ++done;
      cv.notify_all();
    };
    ASSERT_TRUE((*engine)->Submit(std::move(r)).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done == kRequests; }));
  }
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_TRUE(got[i].status.ok()) << i << ": " << got[i].status;
    EXPECT_EQ(got[i].tokens, alone[i]) << i;
  }
  const EngineStats st = (*engine)->stats();
  EXPECT_GE(st.oom_shrinks, 1);
  EXPECT_LT(st.step_token_budget, o.step_token_budget);
  std::printf("oom_shrinks=%lld step_token_budget=%lld row_cap=%lld\n",
              static_cast<long long>(st.oom_shrinks), static_cast<long long>(st.step_token_budget),
              static_cast<long long>(st.row_cap));
}

TEST(EngineOomTest, AnOutOfMemoryStepShrinksTheBatchAndTheEngineLives) {
  if (getenv(kChildEnv)) GTEST_SKIP() << "the child";
  testing::TempDir dir;
  const std::string out = dir.Join("child.log");
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--gtest_filter=EngineOomChild.*"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s = {absl::StrCat(kChildEnv, "=1"), "OMP_WAIT_POLICY=PASSIVE",
                                    "OMP_NUM_THREADS=1"};
  for (char** e = environ; *e; ++e) env_s.push_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), envp.data()), 0);
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::ifstream in(out);
  std::stringstream log;
  log << in.rdbuf();
  ASSERT_TRUE(WIFEXITED(status)) << "the child died (signal " << WTERMSIG(status) << ")\n"
                                 << log.str();
  EXPECT_EQ(WEXITSTATUS(status), 0) << log.str();
  EXPECT_NE(log.str().find("[  PASSED  ] 1 test"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("oom_shrinks="), std::string::npos) << log.str();
}

}  // namespace
}  // namespace tunefleet::serving
