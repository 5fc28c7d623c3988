// The service binaries as real processes: every one starts and reports
// SERVING, SIGTERM drains an in-flight stream before a clean exit, SIGKILL
// in the middle of an upload leaves nothing behind.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "cli/fleet.h"
#include "common/base/sha256.h"
#include "common/base/subprocess.h"
#include "common/rpc/auth.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

TEST(Fleet, EveryServiceStartsServingAndStopsCleanly) {
  testing::TempDir dir;
  cli::LocalFleetOptions options;
  options.data_dir = dir.Join("fleet");
  options.bin_dir = TUNEFLEET_BIN_DIR;
  auto fleet = cli::LocalFleet::Start(options);
  ASSERT_THAT(fleet, IsOk());
  ASSERT_EQ((*fleet)->services().size(), 4u);
  for (const auto& s : (*fleet)->services()) {
    rpc::ChannelOptions channel;
    channel.target = s.address;
    auto health = cli::CheckHealth(channel, absl::Seconds(5));
    ASSERT_THAT(health, IsOk()) << s.name;
    EXPECT_EQ(*health, "SERVING") << s.name;
    EXPECT_GT(s.metrics_port, 0) << s.name;
  }
  EXPECT_TRUE(std::filesystem::exists(dir.Join("fleet/fleet.json")));
  EXPECT_THAT((*fleet)->Stop(absl::Seconds(30)), IsOk());
}

// One tunefleet-dataset process on a free port.
class DatasetProcess {
 public:
  DatasetProcess(const std::string& dir, const std::string& keys_file,
                 std::vector<std::string> extra_flags = {}) {
    port_file_ = dir + "/dataset.ports.json";
    std::filesystem::remove(port_file_);
    std::vector<std::string> argv = {
        std::string(TUNEFLEET_BIN_DIR) + "/tunefleet-dataset", "--listen=127.0.0.1:0",
        "--metrics_listen=off", "--keys_file=" + keys_file, "--data_dir=" + dir + "/data",
        "--port_file=" + port_file_, "--drain_timeout=20s", "--log_level=warn"};
    argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
    auto proc = Subprocess::Start(argv, Subprocess::Options{dir + "/dataset.log", {}});
    status_ = proc.status();
    if (!proc.ok()) return;
    process_ = std::make_unique<Subprocess>(std::move(*proc));
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!std::filesystem::exists(port_file_) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::ifstream in(port_file_);
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) {
      status_ = absl::DeadlineExceededError("tunefleet-dataset did not start");
      return;
    }
    target_ = absl::StrCat("127.0.0.1:", j["port"].get<int>());
  }
  const absl::Status& status() const { return status_; }
  Subprocess& process() { return *process_; }
  const std::string& target() const { return target_; }
  std::unique_ptr<v1::DatasetService::Stub> Stub() const {
    rpc::ChannelOptions o;
    o.target = target_;
    return v1::DatasetService::NewStub(*rpc::MakeChannel(o));
  }

 private:
  absl::Status status_;
  std::string port_file_;
  std::string target_;
  std::unique_ptr<Subprocess> process_;
};

class DatasetProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_.Join("keys.txt")) << key_.line << "\n";
  }
  std::unique_ptr<DatasetProcess> StartDataset(std::vector<std::string> extra_flags = {}) {
    auto p = std::make_unique<DatasetProcess>(dir_.path(), dir_.Join("keys.txt"),
                                              std::move(extra_flags));
    EXPECT_THAT(p->status(), IsOk());
    return p;
  }
  v1::UploadFileRequest Metadata() {
    v1::UploadFileRequest req;
    req.mutable_metadata()->set_filename("train.jsonl");
    req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
    return req;
  }
  static v1::UploadFileRequest Chunk(const std::string& data) {
    v1::UploadFileRequest req;
    req.set_chunk(data);
    return req;
  }
  size_t BlobFiles() {
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir_.Join("data/blobs"), ec);
         it != std::filesystem::recursive_directory_iterator(); ++it) {
      if (it->is_regular_file()) ++n;
    }
    return n;
  }

  testing::TempDir dir_;
  rpc::NewKey key_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
};

TEST_F(DatasetProcessTest, SigtermDrainsAnInFlightUploadThenExitsZero) {
  auto dataset = StartDataset();
  ASSERT_THAT(dataset->status(), IsOk());
  auto stub = dataset->Stub();
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_.key, absl::Seconds(60));
  v1::File file;
  auto writer = stub->UploadFile(&ctx, &file);
  std::string part1(300000, 'a'), part2(300000, 'b');
  ASSERT_TRUE(writer->Write(Metadata()));
  ASSERT_TRUE(writer->Write(Chunk(part1)));
  // The call must be in flight on the server (its upload staged on disk)
  // before the signal: a call that arrives after shutdown began is refused.
  absl::Time staged_deadline = absl::Now() + absl::Seconds(20);
  while (BlobFiles() == 0 && absl::Now() < staged_deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_GT(BlobFiles(), 0u);

  ASSERT_THAT(dataset->process().Signal(SIGTERM), IsOk());
  // Wait until the server has begun shutting down: it no longer reports
  // SERVING to new calls.
  rpc::ChannelOptions fresh;
  fresh.target = dataset->target();
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  for (;;) {
    auto h = cli::CheckHealth(fresh, absl::Seconds(2));
    if (!h.ok() || *h != "SERVING") break;
    ASSERT_LT(absl::Now(), deadline) << "server never began shutting down";
    absl::SleepFor(absl::Milliseconds(20));
  }
  // The in-flight stream is drained, not cut.
  ASSERT_TRUE(writer->Write(Chunk(part2)));
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status finished = writer->Finish();
  ASSERT_TRUE(finished.ok()) << finished.error_message();
  EXPECT_EQ(file.sha256(), Sha256Hex(part1 + part2));

  auto exited = dataset->process().Wait(absl::Seconds(30));
  ASSERT_THAT(exited, IsOk());
  EXPECT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0) << DescribeWaitStatus(*exited);

  // What the drained call stored is there after a restart.
  auto again = StartDataset();
  ASSERT_THAT(again->status(), IsOk());
  grpc::ClientContext get_ctx;
  rpc::PrepareContext(&get_ctx, key_.key, absl::Seconds(10));
  v1::GetFileRequest get;
  get.set_file_id(file.id());
  v1::File got;
  ASSERT_TRUE(again->Stub()->GetFile(&get_ctx, get, &got).ok());
  EXPECT_EQ(got.bytes(), 600000);
}

TEST_F(DatasetProcessTest, SigkillMidUploadLeavesNothingVisibleOrOnDisk) {
  auto dataset = StartDataset();
  ASSERT_THAT(dataset->status(), IsOk());
  {
    auto stub = dataset->Stub();
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key_.key, absl::Seconds(60));
    v1::File file;
    auto writer = stub->UploadFile(&ctx, &file);
    ASSERT_TRUE(writer->Write(Metadata()));
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(writer->Write(Chunk(std::string(100000, 'z'))));
    // Make sure the bytes reached the server's disk before the kill: a
    // staged upload exists.
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (BlobFiles() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_GT(BlobFiles(), 0u);
    ASSERT_THAT(dataset->process().Signal(SIGKILL), IsOk());
    auto exited = dataset->process().Wait(absl::Seconds(10));
    ASSERT_THAT(exited, IsOk());
    EXPECT_TRUE(WIFSIGNALED(*exited));
    ctx.TryCancel();
  }
  auto again = StartDataset();
  ASSERT_THAT(again->status(), IsOk());
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_.key, absl::Seconds(10));
  v1::ListFilesResponse list;
  ASSERT_TRUE(again->Stub()->ListFiles(&ctx, {}, &list).ok());
  EXPECT_EQ(list.files_size(), 0);
  EXPECT_EQ(BlobFiles(), 0u) << "partial upload left on disk after restart";
}

// kB value of a line of /proc/<pid>/status ("VmRSS:", "VmHWM:").
int64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(field.size()));
  }
  return -1;
}

// A 1 GiB upload streams through the service with flat memory: the peak
// resident size grows by less than 64 MiB over the idle process.
TEST_F(DatasetProcessTest, OneGibUploadKeepsMemoryFlat) {
  auto dataset = StartDataset({"--max_file_bytes=2147483648", "--tenant_quota_bytes=4294967296"});
  ASSERT_THAT(dataset->status(), IsOk());
  const pid_t pid = dataset->process().pid();
  const int64_t baseline_kb = ProcStatusKb(pid, "VmRSS:");
  ASSERT_GT(baseline_kb, 0);

  std::string chunk;
  while (chunk.size() < (1u << 20) - 200) {
    absl::StrAppend(&chunk, R"({"messages": [{"role": "user", "content": "question )",
                    chunk.size(), R"("}, {"role": "assistant", "content": "answer"}]})", "\n");
  }
  const int64_t total = int64_t{1} << 30;
  auto stub = dataset->Stub();
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key_.key, absl::Minutes(10));
  v1::File file;
  auto writer = stub->UploadFile(&ctx, &file);
  ASSERT_TRUE(writer->Write(Metadata()));
  v1::UploadFileRequest req;
  Sha256 sha;
  int64_t sent = 0;
  while (sent < total) {
    size_t n = static_cast<size_t>(std::min<int64_t>(chunk.size(), total - sent));
    req.set_chunk(chunk.data(), n);
    sha.Update(absl::string_view(chunk.data(), n));
    ASSERT_TRUE(writer->Write(req));
    sent += static_cast<int64_t>(n);
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status status = writer->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(file.bytes(), total);
  EXPECT_EQ(file.sha256(), sha.HexDigest());
  std::cout << "after upload: peak " << ProcStatusKb(pid, "VmHWM:") / 1024 << " MiB\n";

  // The automatic validation reads the whole file too; wait for it.
  absl::Time deadline = absl::Now() + absl::Minutes(5);
  for (;;) {
    grpc::ClientContext get_ctx;
    rpc::PrepareContext(&get_ctx, key_.key, absl::Seconds(10));
    v1::GetFileRequest get;
    get.set_file_id(file.id());
    v1::File got;
    ASSERT_TRUE(stub->GetFile(&get_ctx, get, &got).ok());
    if (got.status() == v1::FILE_STATUS_PROCESSED || got.status() == v1::FILE_STATUS_ERROR) break;
    ASSERT_LT(absl::Now(), deadline);
    absl::SleepFor(absl::Milliseconds(100));
  }
  const int64_t peak_kb = ProcStatusKb(pid, "VmHWM:");
  const int64_t growth_mib = (peak_kb - baseline_kb) / 1024;
  std::cout << "1 GiB upload: baseline RSS " << baseline_kb / 1024 << " MiB, peak "
            << peak_kb / 1024 << " MiB, growth " << growth_mib << " MiB\n";
  EXPECT_LT(growth_mib, 64);
}

}  // namespace
}  // namespace tunefleet

namespace tunefleet {
namespace {

// The CLI against a local fleet: files upload, list, get, delete, and a
// clear error for a bad purpose.
TEST(Cli, FilesCommandsAgainstALocalFleet) {
  testing::TempDir dir;
  cli::LocalFleetOptions options;
  options.data_dir = dir.Join("fleet");
  options.bin_dir = TUNEFLEET_BIN_DIR;
  auto fleet = cli::LocalFleet::Start(options);
  ASSERT_THAT(fleet, IsOk());
  auto run = [&](std::vector<std::string> args) -> std::pair<int, std::string> {
    std::string log = dir.Join("cli.out");
    std::filesystem::remove(log);
    args.insert(args.begin(), std::string(TUNEFLEET_BIN_DIR) + "/tunefleet");
    auto p = Subprocess::Start(args, Subprocess::Options{log, {}});
    if (!p.ok()) return {-1, ""};
    auto status = p->Wait(absl::Seconds(60));
    std::ifstream in(log);
    std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return {status.ok() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1, out};
  };
  std::string sample = std::string(TUNEFLEET_SOURCE_DIR) + "/examples/data/chat_sample.jsonl";
  std::string fleet_flag = "--fleet=" + options.data_dir;
  auto [rc, out] = run({"files", "upload", sample, fleet_flag});
  ASSERT_EQ(rc, 0) << out;
  ASSERT_THAT(out, ::testing::HasSubstr("chat_sample.jsonl"));
  std::string id = out.substr(0, out.find(' '));
  ASSERT_THAT(id, ::testing::StartsWith("file-"));
  auto listed = run({"files", "list", fleet_flag});
  EXPECT_EQ(listed.first, 0);
  EXPECT_THAT(listed.second, ::testing::HasSubstr(id));
  EXPECT_EQ(run({"files", "get", id, fleet_flag}).first, 0);
  auto validated = run({"files", "validate", id, fleet_flag});
  EXPECT_EQ(validated.first, 0) << validated.second;
  EXPECT_THAT(validated.second, ::testing::HasSubstr("examples 20"));
  auto split = run({"files", "split", id, "--ratio=0.25", "--seed=3", fleet_flag});
  EXPECT_EQ(split.first, 0) << split.second;
  EXPECT_THAT(split.second, ::testing::HasSubstr("chat_sample-validation.jsonl"));
  EXPECT_EQ(run({"files", "delete", id, fleet_flag}).first, 0);
  auto gone = run({"files", "get", id, fleet_flag});
  EXPECT_EQ(gone.first, 3);  // not found (cli/commands.h)
  EXPECT_THAT(gone.second, ::testing::HasSubstr("NOT_FOUND"));
  auto bad = run({"files", "upload", sample, "--purpose=training", fleet_flag});
  EXPECT_EQ(bad.first, 2);  // bad argument
  EXPECT_THAT(bad.second, ::testing::HasSubstr("--purpose must be fine-tune or validation"));
  EXPECT_THAT((*fleet)->Stop(absl::Seconds(30)), IsOk());
}

}  // namespace
}  // namespace tunefleet
