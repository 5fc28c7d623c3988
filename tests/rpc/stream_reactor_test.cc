// rpc::PullWriteReactor over a real loopback server: everything arrives in
// order whatever the producer does, a slow client never blocks the producer,
// a cancel or a server shutdown mid-stream ends it and cleans up, and a
// Pull error reaches the client.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/stream_reactor.h"
#include "tests/testing/status_matchers.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::rpc {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;

// What the producer has made so far: an append-only log the streams read by
// index (a job's event history in miniature). Holds no per-stream queue.
// Wakes run under their own lock, so Unsubscribe returning means no wake of
// that reactor is running (the event bus's rule).
class Log {
 public:
  void Add(std::string data) {
    {
      absl::MutexLock lock(&mu_);
      items_.push_back(std::move(data));
    }
    WakeAll();
  }
  void Close() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
    }
    WakeAll();
  }
  // The item at `i`, or nothing yet; `closed` when nothing more will come.
  bool At(size_t i, std::string* out, bool* closed) {
    absl::MutexLock lock(&mu_);
    *closed = closed_ && i >= items_.size();
    if (i >= items_.size()) return false;
    *out = items_[i];
    return true;
  }
  void Subscribe(PullWriteReactor<v1::FileChunk>* r) {
    absl::MutexLock lock(&wake_mu_);
    watchers_.insert(r);
  }
  void Unsubscribe(PullWriteReactor<v1::FileChunk>* r) {
    absl::MutexLock lock(&wake_mu_);
    watchers_.erase(r);
  }

 private:
  void WakeAll() {
    absl::MutexLock lock(&wake_mu_);
    for (auto* r : watchers_) r->Wake();
  }
  absl::Mutex mu_;
  std::vector<std::string> items_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex wake_mu_;
  std::set<PullWriteReactor<v1::FileChunk>*> watchers_ ABSL_GUARDED_BY(wake_mu_);
};

struct Counters {
  std::atomic<int> pulls{0};
  std::atomic<int> cleanups{0};
  std::atomic<int> live{0};
};

// Streams the log from `offset` (the request's offset); offset -1 fails
// the first Pull.
class LogReactor final : public PullWriteReactor<v1::FileChunk> {
 public:
  LogReactor(Log* log, Counters* counters, int64_t offset, Executor* executor)
      : PullWriteReactor(executor), log_(log), counters_(counters), next_(offset) {
    ++counters_->live;
    log_->Subscribe(this);
    Start();
  }

 private:
  absl::StatusOr<Pulled> Pull(v1::FileChunk* out) override {
    ++counters_->pulls;
    if (next_ < 0) return absl::FailedPreconditionError("offset -1: the log is sealed");
    std::string data;
    bool closed = false;
    if (!log_->At(static_cast<size_t>(next_), &data, &closed)) {
      return closed ? Pulled::kEnd : Pulled::kWait;
    }
    out->set_offset(next_++);
    out->set_data(std::move(data));
    return Pulled::kMessage;
  }
  void Cleanup() override {
    log_->Unsubscribe(this);
    ++counters_->cleanups;
    --counters_->live;
  }

  Log* const log_;
  Counters* const counters_;
  int64_t next_;
};

class LogService final : public v1::DatasetService::CallbackService {
 public:
  LogService(Log* log, Counters* counters, Executor* executor)
      : log_(log), counters_(counters), executor_(executor) {}
  grpc::ServerWriteReactor<v1::FileChunk>* GetFileContent(
      grpc::CallbackServerContext*, const v1::GetFileContentRequest* request) override {
    return new LogReactor(log_, counters_, request->offset(), executor_);
  }

 private:
  Log* log_;
  Counters* counters_;
  Executor* executor_;
};

// With and without an executor for the pulls.
class StreamReactorTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) executor_ = std::make_unique<Executor>(2);
    service_ = std::make_unique<LogService>(&log_, &counters_, executor_.get());
    ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Milliseconds(300);
    server_ = std::make_unique<Server>(so);
    server_->AddService(service_.get());
    ASSERT_THAT(server_->Start(), IsOk());
    server_->SetServing(true);
    ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    stub_ = v1::DatasetService::NewStub(*MakeChannel(co));
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    server_.reset();
    executor_.reset();
  }
  std::unique_ptr<grpc::ClientReader<v1::FileChunk>> Open(grpc::ClientContext* ctx,
                                                          int64_t offset = 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GetFileContentRequest req;
    req.set_offset(offset);
    return stub_->GetFileContent(ctx, req);
  }
  // Waits for a condition the server side reaches on its own (the reactor
  // cleans up on a gRPC thread after the client has its status).
  static bool Eventually(const std::function<bool()>& cond) {
    absl::Time end = absl::Now() + absl::Seconds(20);
    while (!cond() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(2));
    return cond();
  }

  Log log_;
  Counters counters_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<LogService> service_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<v1::DatasetService::Stub> stub_;
};

TEST_P(StreamReactorTest, ReplaysThenFollowsInOrderThenEnds) {
  for (int i = 0; i < 5; ++i) log_.Add(absl::StrCat("m", i));
  grpc::ClientContext ctx;
  auto reader = Open(&ctx, 2);
  v1::FileChunk c;
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(reader->Read(&c));
    got.push_back(c.data());
  }
  // Caught up: the stream waits for the producer, from another thread.
  std::thread producer([&] {
    for (int i = 5; i < 200; ++i) log_.Add(absl::StrCat("m", i));
    log_.Close();
  });
  while (reader->Read(&c)) {
    EXPECT_EQ(c.offset(), static_cast<int64_t>(got.size()) + 2);
    got.push_back(c.data());
  }
  producer.join();
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_EQ(got.size(), 198u);
  EXPECT_EQ(got.front(), "m2");
  EXPECT_EQ(got.back(), "m199");
  EXPECT_TRUE(Eventually([&] { return counters_.cleanups.load() == 1; }));
}

TEST_P(StreamReactorTest, ASlowClientNeverBlocksTheProducerAndGetsEverything) {
  grpc::ClientContext ctx;
  auto reader = Open(&ctx);
  // The client reads nothing while 20,000 messages (about 2 MB) are made:
  // every Add returns at once (no per-stream queue to fill), and the
  // reactor has pulled only what gRPC's flow control let it write.
  const std::string payload(100, 'x');
  for (int i = 0; i < 20000; ++i) log_.Add(payload);
  log_.Close();
  EXPECT_LT(counters_.pulls.load(), 20000);
  int n = 0;
  v1::FileChunk c;
  while (reader->Read(&c)) {
    ASSERT_EQ(c.offset(), n);
    ++n;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 20000);
}

TEST_P(StreamReactorTest, ClientCancelMidStreamEndsItAndCleansUp) {
  for (int i = 0; i < 3; ++i) log_.Add("early");
  grpc::ClientContext ctx;
  auto reader = Open(&ctx);
  v1::FileChunk c;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&c));
  ctx.TryCancel();  // while the server waits for more
  while (reader->Read(&c)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return counters_.cleanups.load() == 1; }));
  EXPECT_EQ(counters_.live.load(), 0);
  log_.Add("after");  // nobody is woken: the reactor unsubscribed
}

TEST_P(StreamReactorTest, ServerShutdownEndsAWaitingStream) {
  log_.Add("one");
  grpc::ClientContext ctx;
  auto reader = Open(&ctx);
  v1::FileChunk c;
  ASSERT_TRUE(reader->Read(&c));
  std::thread stop([&] { server_->Shutdown(); });
  while (reader->Read(&c)) {
  }
  grpc::Status s = reader->Finish();
  stop.join();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(Eventually([&] { return counters_.cleanups.load() == 1; }));
  EXPECT_EQ(counters_.live.load(), 0);
}

TEST_P(StreamReactorTest, APullErrorReachesTheClient) {
  grpc::ClientContext ctx;
  auto reader = Open(&ctx, -1);
  v1::FileChunk c;
  EXPECT_FALSE(reader->Read(&c));
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("the log is sealed"));
  EXPECT_TRUE(Eventually([&] { return counters_.cleanups.load() == 1; }));
}

INSTANTIATE_TEST_SUITE_P(PullsInlineAndOnAnExecutor, StreamReactorTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Executor" : "Inline";
                         });

}  // namespace
}  // namespace tunefleet::rpc
