#include "services/trainer/agent/worker_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

extern char** environ;

namespace tunefleet::trainer {
namespace {

std::string Errno(absl::string_view what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

// Moves `fd` above `avoid` (child side, async-signal-safe) when it collides.
int MoveAbove(int fd, int avoid) {
  if (fd != avoid) return fd;
  return fcntl(fd, F_DUPFD_CLOEXEC, avoid + 1);
}

// Reads what is available; true at end of file (or a read error).
bool Drain(int fd, std::string* buf) {
  char chunk[64 << 10];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n > 0) {
      buf->append(chunk, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return true;
    if (errno == EINTR) continue;
    return errno != EAGAIN && errno != EWOULDBLOCK;
  }
}

}  // namespace

bool WorkerExit::success() const {
  return !hung && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
}

std::string WorkerExit::Describe() const {
  if (hung) {
    return absl::StrCat("hung: no report for ", absl::FormatDuration(silent_for), ", killed");
  }
  if (WIFEXITED(wait_status)) return absl::StrCat("exited ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("killed by signal ", WTERMSIG(wait_status));
  return absl::StrCat("wait status ", wait_status);
}

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(WorkerProcessOptions options,
                                                                    LineCallback on_line,
                                                                    ExitCallback on_exit) {
  if (options.argv.empty()) return absl::InvalidArgumentError("worker argv is empty");
  if (options.report_fd < 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("report_fd ", options.report_fd, " would replace a standard stream"));
  }
  // Everything the child needs is prepared here: between fork and exec only
  // async-signal-safe calls are allowed (the agent is multithreaded).
  auto self = std::unique_ptr<WorkerProcess>(new WorkerProcess());
  self->options_ = std::move(options);
  self->on_line_ = std::move(on_line);
  self->on_exit_ = std::move(on_exit);
  const WorkerProcessOptions& o = self->options_;

  auto args = std::make_shared<std::vector<std::string>>(o.argv);
  auto env = std::make_shared<std::vector<std::string>>();
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    bool overridden = false;
    for (const std::string& extra : o.env) {
      size_t eq = extra.find('=');
      if (eq != std::string::npos && absl::string_view(extra).substr(0, eq + 1) ==
                                         entry.substr(0, std::min(entry.size(), eq + 1))) {
        overridden = true;
      }
    }
    if (!overridden) env->emplace_back(entry);
  }
  for (const std::string& extra : o.env) env->push_back(extra);

  int report[2], status[2];
  if (pipe2(report, O_CLOEXEC) != 0) return absl::InternalError(Errno("pipe"));
  if (pipe2(status, O_CLOEXEC) != 0) {
    close(report[0]);
    close(report[1]);
    return absl::InternalError(Errno("pipe"));
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int log_fd = -1;
  if (!o.log_file.empty()) {
    log_fd = open(o.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  }
  if (devnull < 0 || (!o.log_file.empty() && log_fd < 0)) {
    std::string err = Errno(devnull < 0 ? "/dev/null" : o.log_file);
    for (int fd : {report[0], report[1], status[0], status[1], devnull, log_fd}) {
      if (fd >= 0) close(fd);
    }
    return absl::InternalError(err);
  }

  struct Launch {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
  };
  auto launch = std::make_shared<Launch>();
  WorkerProcess* raw = self.get();
  const int report_fd = o.report_fd;
  self->thread_ = std::thread([raw, launch, args, env, report_r = report[0], report_w = report[1],
                               status_r = status[0], status_w = status[1], devnull, log_fd,
                               report_fd] {
    std::vector<char*> argv, envp;
    for (auto& a : *args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : *env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
      // Child. Its own group, so that a kill reaches what it forks; killed
      // when this (supervisor) thread's process dies.
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);  // the agent died before prctl
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      struct sigaction dfl;
      std::memset(&dfl, 0, sizeof(dfl));
      dfl.sa_handler = SIG_DFL;
      for (int sig = 1; sig < NSIG; ++sig) {
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
      }
      int st = MoveAbove(status_w, report_fd);
      int dn = MoveAbove(devnull, report_fd);
      int lg = log_fd >= 0 ? MoveAbove(log_fd, report_fd) : -1;
      dup2(dn, STDIN_FILENO);
      if (lg >= 0) {
        dup2(lg, STDOUT_FILENO);
        dup2(lg, STDERR_FILENO);
      }
      if (report_w == report_fd) {
        fcntl(report_fd, F_SETFD, 0);
      } else {
        dup2(report_w, report_fd);
      }
      execve(argv[0], argv.data(), envp.data());
      int err = errno;
      (void)!write(st, &err, sizeof(err));
      _exit(127);
    }
    int fork_errno = errno;
    close(report_w);
    close(status_w);
    close(devnull);
    if (log_fd >= 0) close(log_fd);
    absl::Status result;
    if (pid < 0) {
      result = absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
    } else {
      setpgid(pid, pid);  // either side may win the race; both set the same
      int child_errno = 0;
      ssize_t n;
      do {
        n = read(status_r, &child_errno, sizeof(child_errno));
      } while (n < 0 && errno == EINTR);
      if (n == sizeof(child_errno)) {
        waitpid(pid, nullptr, 0);
        result = absl::NotFoundError(
            absl::StrCat("cannot run worker ", (*args)[0], ": ", std::strerror(child_errno)));
      }
    }
    close(status_r);
    if (result.ok()) raw->pid_ = pid;
    {
      absl::MutexLock lock(&launch->mu);
      launch->status = result;
      launch->done = true;
    }
    if (!result.ok()) {
      close(report_r);
      return;
    }
    raw->Run(report_r);
  });

  absl::Status result;
  {
    absl::MutexLock lock(&launch->mu);
    launch->mu.Await(absl::Condition(&launch->done));
    result = launch->status;
  }
  if (!result.ok()) {
    self->thread_.join();
    return result;
  }
  return self;
}

void WorkerProcess::Run(int read_fd) {
  fcntl(read_fd, F_SETFL, fcntl(read_fd, F_GETFL) | O_NONBLOCK);
  std::string buf;
  bool eof = false;
  absl::Duration last_line = options_.clock->Monotonic();
  WorkerExit result;
  auto deliver = [&](bool flush) {
    size_t start = 0;
    for (;;) {
      size_t nl = buf.find('\n', start);
      if (nl == std::string::npos) break;
      std::string line = buf.substr(start, std::min(nl - start, options_.max_line_bytes));
      start = nl + 1;
      last_line = options_.clock->Monotonic();
      on_line_(std::move(line));
    }
    buf.erase(0, start);
    if (buf.size() > options_.max_line_bytes || (flush && !buf.empty())) {
      std::string line = buf.substr(0, options_.max_line_bytes);
      buf.clear();
      last_line = options_.clock->Monotonic();
      on_line_(std::move(line));
    }
  };
  const int poll_ms = std::max<int>(1, absl::ToInt64Milliseconds(options_.poll_interval));
  for (;;) {
    if (!eof) {
      pollfd p{read_fd, POLLIN, 0};
      poll(&p, 1, poll_ms);
      eof = Drain(read_fd, &buf);
      deliver(false);
    } else {
      poll(nullptr, 0, poll_ms);
    }
    siginfo_t info;
    std::memset(&info, 0, sizeof(info));
    // WNOWAIT leaves a zombie, which keeps the group id from being reused
    // while the rest of the group is killed below.
    if (waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid_) {
      if (!eof) Drain(read_fd, &buf);
      deliver(true);
      absl::MutexLock lock(&mu_);
      kill(-pid_, SIGKILL);  // whatever the worker left behind in its group
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      result.wait_status = status;
      reaped_ = true;
      break;
    }
    absl::Duration silent = options_.clock->Monotonic() - last_line;
    if (!result.hung && silent > options_.report_timeout) {
      absl::MutexLock lock(&mu_);
      kill(-pid_, SIGKILL);
      result.hung = true;
      result.silent_for = absl::Trunc(silent, absl::Milliseconds(1));
    }
  }
  close(read_fd);
  on_exit_(result);
  absl::MutexLock lock(&mu_);
  exit_ = result;
}

WorkerProcess::~WorkerProcess() {
  {
    absl::MutexLock lock(&mu_);
    if (!reaped_ && pid_ > 0) kill(-pid_, SIGKILL);
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status WorkerProcess::Signal(int sig) {
  absl::MutexLock lock(&mu_);
  if (reaped_) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", pid_, " has already exited"));
  }
  if (kill(-pid_, sig) != 0) return absl::InternalError(Errno(absl::StrCat("kill ", -pid_)));
  return absl::OkStatus();
}

std::optional<WorkerExit> WorkerProcess::WaitForExit(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto has_exit = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return exit_.has_value(); };
  mu_.AwaitWithTimeout(absl::Condition(&has_exit), timeout);
  return exit_;
}

}  // namespace tunefleet::trainer
