// The client side of common/rpc against real loopback servers: retries of
// UNAVAILABLE, none of INVALID_ARGUMENT (details kept), the deadline of every
// attempt, a server that comes up while the client retries, cancellation.
// Links tunefleet_rpc_client only (no server bootstrap, no metrics exposer).
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/synchronization/notification.h"
#include "common/errors/error_details.h"
#include "common/rpc/channel.h"
#include "common/rpc/client.h"
#include "common/rpc/status.h"
#include "tests/testing/status_matchers.h"
#include "tunefleet/v1/files.grpc.pb.h"

namespace tunefleet::rpc {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

// GetFile answers UNAVAILABLE `unavailable` times, then by `mode`. Counts
// calls and remembers the metadata of the last one.
class TestFiles final : public v1::DatasetService::CallbackService {
 public:
  enum class Mode { kOk, kInvalid, kHang };
  std::atomic<int> unavailable{0};
  std::atomic<Mode> mode{Mode::kOk};
  std::atomic<int> calls{0};
  std::atomic<bool> saw_key{false}, saw_tenant{false};

  grpc::ServerUnaryReactor* GetFile(grpc::CallbackServerContext* context,
                                    const v1::GetFileRequest* request, v1::File* file) override {
    ++calls;
    const auto& md = context->client_metadata();
    auto auth = md.find("authorization");
    saw_key = auth != md.end() && auth->second == "Bearer k1";
    auto tenant = md.find("x-tunefleet-tenant");
    saw_tenant = tenant != md.end() && tenant->second == "acme";
    if (unavailable > 0) {
      --unavailable;
      return Done(context, grpc::Status(grpc::StatusCode::UNAVAILABLE, "not yet"));
    }
    switch (mode.load()) {
      case Mode::kOk:
        file->set_id(request->file_id());
        return Done(context, grpc::Status::OK);
      case Mode::kInvalid:
        return Done(context, ToGrpcStatus(errors::FieldError("file_id", "must start with file-")));
      case Mode::kHang:
        return new Hang();  // answers only when the client gives up
    }
    return nullptr;
  }

 private:
  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, grpc::Status s) {
    auto* r = context->DefaultReactor();
    r->Finish(std::move(s));
    return r;
  }
  class Hang final : public grpc::ServerUnaryReactor {
    void OnCancel() override { Finish(grpc::Status::CANCELLED); }
    void OnDone() override { delete this; }
  };
};

std::unique_ptr<grpc::Server> Serve(TestFiles* service, const std::string& address,
                                    int* port = nullptr) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int port = 0;
    server_ = Serve(&service_, "127.0.0.1:0", &port);
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    address_ = "127.0.0.1:" + std::to_string(port);
    auto channel = MakeChannel({address_});
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  }
  CallOptions Options() const {
    CallOptions o;
    o.timeout = absl::Seconds(5);
    o.initial_backoff = absl::Milliseconds(5);
    o.max_backoff = absl::Milliseconds(20);
    o.api_key = "k1";
    o.on_behalf_of = "acme";
    return o;
  }
  v1::GetFileRequest Request() const {
    v1::GetFileRequest r;
    r.set_file_id("file-1");
    return r;
  }

  TestFiles service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ClientTest, RetriesUnavailableThenSucceeds) {
  service_.unavailable = 3;
  std::vector<int> retried;
  CallOptions o = Options();
  o.on_retry = [&](const absl::Status& s, int attempt, absl::Duration) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    retried.push_back(attempt);
  };
  TypedClient<v1::DatasetService> client(channel_, o);
  auto file = client.Call(&v1::DatasetService::Stub::GetFile, Request());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->id(), "file-1");
  EXPECT_EQ(service_.calls.load(), 4);
  EXPECT_THAT(retried, ::testing::ElementsAre(1, 2, 3));
  // Every attempt carries the key and the tenant acted for.
  EXPECT_TRUE(service_.saw_key);
  EXPECT_TRUE(service_.saw_tenant);
}

TEST_F(ClientTest, GivesUpAfterMaxAttempts) {
  service_.unavailable = 100;
  CallOptions o = Options();
  o.max_attempts = 3;
  auto file = CallUnary(v1::DatasetService::NewStub(channel_).get(),
                        &v1::DatasetService::Stub::GetFile, Request(), o);
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("not yet")));
  EXPECT_EQ(service_.calls.load(), 3);
}

TEST_F(ClientTest, InvalidArgumentIsNotRetriedAndKeepsDetails) {
  service_.mode = TestFiles::Mode::kInvalid;
  CallOptions o = Options();
  o.retry_deadline_exceeded = true;  // still no retry: not a transient code
  TypedClient<v1::DatasetService> client(channel_, o);
  auto file = client.Call(&v1::DatasetService::Stub::GetFile, Request());
  EXPECT_THAT(file.status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must start with file-")));
  EXPECT_EQ(service_.calls.load(), 1);
  errors::Details d = errors::GetDetails(file.status());
  ASSERT_EQ(d.field_violations.size(), 1u);
  EXPECT_EQ(d.field_violations[0].field, "file_id");
  EXPECT_EQ(d.reason, "INVALID_FIELD");
}

TEST_F(ClientTest, EveryAttemptHasADeadline) {
  service_.mode = TestFiles::Mode::kHang;
  CallOptions o = Options();
  o.timeout = absl::Milliseconds(300);
  TypedClient<v1::DatasetService> client(channel_, o);
  absl::Time start = absl::Now();
  auto file = client.Call(&v1::DatasetService::Stub::GetFile, Request());
  absl::Duration took = absl::Now() - start;
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  // DEADLINE_EXCEEDED is not retried unless the call says it is idempotent.
  EXPECT_EQ(service_.calls.load(), 1);
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(3));
}

TEST_F(ClientTest, IdempotentCallRetriesDeadlineWithinTheOverallBound) {
  service_.mode = TestFiles::Mode::kHang;
  CallOptions o = Options();
  o.timeout = absl::Milliseconds(200);
  o.max_attempts = 0;  // bounded by the overall deadline only
  o.overall_timeout = absl::Milliseconds(700);
  o.retry_deadline_exceeded = true;
  absl::Time start = absl::Now();
  absl::Status s = CallWithRetry(o, [&](grpc::ClientContext* ctx) {
    v1::File file;
    return v1::DatasetService::NewStub(channel_)->GetFile(ctx, Request(), &file);
  });
  absl::Duration took = absl::Now() - start;
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(service_.calls.load(), 2);
  EXPECT_GE(took, absl::Milliseconds(600));
  EXPECT_LT(took, absl::Seconds(4));
}

TEST_F(ClientTest, ServerThatComesUpWhileTheClientRetries) {
  // The port is free again once this server is gone; the client's first
  // attempt finds nobody there, and the server comes up during its backoff.
  server_->Shutdown();
  server_->Wait();
  server_.reset();
  TestFiles late;
  std::unique_ptr<grpc::Server> late_server;
  CallOptions o = Options();
  o.max_attempts = 0;
  o.overall_timeout = absl::Seconds(20);
  int failures = 0;
  o.on_retry = [&](const absl::Status& s, int, absl::Duration) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    ++failures;
    if (late_server == nullptr) late_server = Serve(&late, address_);
    ASSERT_NE(late_server, nullptr);
  };
  TypedClient<v1::DatasetService> client(channel_, o);
  auto file = client.Call(&v1::DatasetService::Stub::GetFile, Request());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_GE(failures, 1);
  EXPECT_EQ(late.calls.load(), 1);
  late_server->Shutdown();
}

TEST_F(ClientTest, CancellationEndsAnAttemptInFlight) {
  service_.mode = TestFiles::Mode::kHang;
  CallCancellation cancel;
  CallOptions o = Options();
  o.timeout = absl::Seconds(30);
  o.cancel = &cancel;
  std::thread canceller([&] {
    // Cancels once the call is at the server (a condition, not a sleep).
    while (service_.calls.load() == 0) std::this_thread::yield();
    cancel.Cancel();
  });
  absl::Time start = absl::Now();
  auto file = CallUnary(v1::DatasetService::NewStub(channel_).get(),
                        &v1::DatasetService::Stub::GetFile, Request(), o);
  canceller.join();
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // A cancelled CallCancellation refuses later calls at once.
  EXPECT_THAT(CallUnary(v1::DatasetService::NewStub(channel_).get(),
                        &v1::DatasetService::Stub::GetFile, Request(), o)
                  .status(),
              StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(service_.calls.load(), 1);
}

TEST_F(ClientTest, ControllerLoopRetriesEveryErrorUntilCancelledInItsBackoff) {
  service_.mode = TestFiles::Mode::kInvalid;
  CallCancellation cancel;
  absl::Notification backing_off;
  CallOptions o = Options();
  o.max_attempts = 0;
  o.retry_every_error = true;
  o.initial_backoff = absl::Seconds(60);  // only a cancellation ends this wait early
  o.max_backoff = absl::Seconds(60);
  o.cancel = &cancel;
  o.on_retry = [&](const absl::Status& s, int, absl::Duration) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    if (!backing_off.HasBeenNotified()) backing_off.Notify();
  };
  std::thread canceller([&] {
    backing_off.WaitForNotification();
    cancel.Cancel();
  });
  absl::Time start = absl::Now();
  auto file = CallUnary(v1::DatasetService::NewStub(channel_).get(),
                        &v1::DatasetService::Stub::GetFile, Request(), o);
  canceller.join();
  EXPECT_THAT(file.status(),
              StatusIs(absl::StatusCode::kCancelled, HasSubstr("INVALID_ARGUMENT")));
  EXPECT_EQ(service_.calls.load(), 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

TEST(IsRetryable, OnlyTransientCodes) {
  CallOptions o;
  EXPECT_TRUE(IsRetryable(o, absl::UnavailableError("x")));
  EXPECT_FALSE(IsRetryable(o, absl::DeadlineExceededError("x")));
  EXPECT_FALSE(IsRetryable(o, absl::InvalidArgumentError("x")));
  EXPECT_FALSE(IsRetryable(o, absl::OkStatus()));
  o.retry_deadline_exceeded = true;
  EXPECT_TRUE(IsRetryable(o, absl::DeadlineExceededError("x")));
  EXPECT_FALSE(IsRetryable(o, absl::NotFoundError("x")));
  o.retry_every_error = true;
  EXPECT_TRUE(IsRetryable(o, absl::NotFoundError("x")));
}

}  // namespace
}  // namespace tunefleet::rpc
