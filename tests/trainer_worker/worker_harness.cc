#include "tests/trainer_worker/worker_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/string_view.h"
#include "common/model/tiny_model.h"
#include "common/text/phi3_tokenizer_files.h"
#include "tests/testing/child_guard.h"

namespace tunefleet::trainer::worker_testing {

const ReportEvent* RunResult::Last(ReportKind k) const {
  for (auto it = events.rbegin(); it != events.rend(); ++it)
    if (it->kind == k) return &*it;
  return nullptr;
}

std::vector<const ReportEvent*> RunResult::All(ReportKind k) const {
  std::vector<const ReportEvent*> out;
  for (const ReportEvent& e : events)
    if (e.kind == k) out.push_back(&e);
  return out;
}

std::map<int64_t, double> RunResult::Losses() const {
  std::map<int64_t, double> out;
  for (const ReportEvent& e : events)
    if (e.kind == ReportKind::kProgress && e.train_loss) out[e.step] = *e.train_loss;
  return out;
}

absl::StatusOr<std::unique_ptr<text::ChatTokenizer>> WriteTinyPhi3(const std::string& dir,
                                                                    double lm_head_scale) {
  model::TinyModelOptions o;
  o.seed = 3;
  o.num_layers = 2;
  o.hidden_size = 64;
  o.num_heads = 4;
  o.num_kv_heads = 4;
  o.intermediate_size = 96;
  o.lm_head_scale = lm_head_scale;
  if (absl::Status s = model::WriteTinyPhi3(dir, o); !s.ok()) return s;
  if (absl::Status s = text::WritePhi3TokenizerFiles(dir); !s.ok()) return s;
  auto chat = text::ChatTokenizer::Load(dir);
  if (!chat.ok()) return chat.status();
  return std::make_unique<text::ChatTokenizer>(*std::move(chat));
}

RunResult RunWorker(const WorkerSpec& spec, const std::string& run_dir, const std::string& name,
                    OnEvent on_event, std::atomic<pid_t>* child_pid) {
  const std::string spec_path = run_dir + "/" + name + ".spec.json";
  std::filesystem::create_directories(run_dir);
  EXPECT_TRUE(WriteWorkerSpecFile(spec, spec_path).ok());
  return RunWorkerWithSpecFile(spec_path, run_dir, name, std::move(on_event), child_pid);
}

RunResult RunWorkerWithSpecFile(const std::string& spec_path, const std::string& run_dir,
                                const std::string& name, OnEvent on_event,
                                std::atomic<pid_t>* child_pid) {
  RunResult r;
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);  // no other runner's child inherits it
  const std::string err_path = run_dir + "/" + name + ".stderr";
  const std::string bin = std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-train-worker";
  tunefleet::testing::ChildGuard child;
  child.pid = ::fork();
  if (child.pid == 0) {
    ::dup2(fds[1], 3);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err >= 0) ::dup2(err, 2);
    if (fds[0] != 3) ::close(fds[0]);
    std::string spec_flag = "--spec=" + spec_path;
    ::execl(bin.c_str(), bin.c_str(), spec_flag.c_str(), "--report_fd=3", nullptr);
    _exit(127);
  }
  ::close(fds[1]);
  if (child_pid) child_pid->store(child.pid);
  ReportLineSplitter split;
  char buf[4096];
  ssize_t n;
  bool signalled = false;
  while ((n = ::read(fds[0], buf, sizeof(buf))) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (const std::string& line : split.Add(absl::string_view(buf, static_cast<size_t>(n)))) {
      auto e = ParseReportLine(line);
      EXPECT_TRUE(e.ok()) << e.status() << ": " << line;
      if (!e.ok()) continue;
      r.events.push_back(*e);
      if (on_event && !signalled) {
        if (int sig = on_event(*e); sig != 0) {
          ::kill(child.pid, sig);
          signalled = true;
        }
      }
    }
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  child.pid = -1;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream err(err_path);
  std::stringstream ss;
  ss << err.rdbuf();
  r.stderr_tail = ss.str();
  if (r.stderr_tail.size() > 2000) r.stderr_tail = r.stderr_tail.substr(r.stderr_tail.size() - 2000);
  return r;
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::vector<RunResult> RunTwoRanks(WorkerSpec base, const std::vector<std::string>& train_parts,
                                   const std::vector<std::string>& valid_parts,
                                   const std::string& run_dir) {
  base.output_dir = run_dir + "/ddp/result";
  base.checkpoint_root = run_dir + "/ddp/checkpoints";
  base.world_size = 2;
  base.master_addr = "127.0.0.1";
  base.master_port = FreePort();
  base.collective_timeout_s = 60;
  std::vector<RunResult> out(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    WorkerSpec s = base;
    s.rank = r;
    s.train_shards = {train_parts[static_cast<size_t>(r)]};
    if (!valid_parts.empty()) s.valid_shards = {valid_parts[static_cast<size_t>(r)]};
    ranks.emplace_back([&out, s, r, &run_dir] {
      out[static_cast<size_t>(r)] = RunWorker(s, run_dir, "rank" + std::to_string(r));
    });
  }
  for (std::thread& t : ranks) t.join();
  return out;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace tunefleet::trainer::worker_testing
