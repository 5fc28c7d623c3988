// DatasetService file handling over a real loopback server, a real SQLite
// file and a real artifact directory.
#include <filesystem>
#include <map>
#include <memory>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/errors/error_details.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "common/store/memory_artifact_store.h"
#include "services/dataset/analyzer.h"
#include "services/dataset/dataset_service.h"
#include "services/dataset/splitter.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::dataset {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

// A small but real tokenizer for the shard tests: one id per byte of
// content (id = byte + 10), a role id before each message and an end id
// after it; the loss covers assistant content and its end id. (The model
// tokenizers plug in through the same TokenizerProvider.)
class ByteTokenizerProvider final : public TokenizerProvider {
 public:
  absl::StatusOr<ModelTokenizer> Get(const std::string& base_model) override {
    if (base_model != "byte-model") {
      return absl::InvalidArgumentError(absl::StrCat("base_model '", base_model, "' is unknown"));
    }
    return ModelTokenizer{"bytes-v1", &Tokenize};
  }
  static absl::StatusOr<TokenizedExample> Tokenize(const Example& ex) {
    TokenizedExample t;
    for (const ChatMessage& m : ex.messages) {
      bool trained = m.role == "assistant" && m.weight.value_or(1) == 1;
      t.ids.push_back(m.role == "system" ? 1 : m.role == "user" ? 2 : 3);
      t.loss_mask.push_back(0);
      for (unsigned char c : m.content) {
        t.ids.push_back(c + 10);
        t.loss_mask.push_back(trained);
      }
      t.ids.push_back(4);
      t.loss_mask.push_back(trained);
    }
    return t;
  }
};

class DatasetServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }
  void TearDown() override { Stop(); }

  void Start() {
    FileRegistryOptions options;
    options.max_file_bytes = 1 << 20;
    options.tenant_quota_bytes = 3 << 20;
    auto registry = FileRegistry::Open(dir_.Join("dataset"), options);
    ASSERT_THAT(registry, IsOk());
    registry_ = std::move(*registry);
    auth_ = std::make_unique<rpc::Authenticator>(*rpc::KeyRing::Parse(
        absl::StrCat(a_.line, "\n", b_.line, "\n", internal_.line, "\n"), "test"));
    executor_ = std::make_unique<rpc::Executor>(2);
    processor_ = std::make_unique<FileProcessor>(registry_.get(), &EncodeReport);
    ASSERT_THAT(processor_->RecoverPending(), IsOk());
    service_ = std::make_unique<DatasetServiceImpl>(auth_.get(), registry_.get(), executor_.get(),
                                                    processor_.get(), &tokenizers_);
    shards_ = std::make_unique<ShardServiceImpl>(auth_.get(), registry_.get(), executor_.get(),
                                                 &tokenizers_, /*batch_tokens=*/8192);
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    so.drain_timeout = absl::Seconds(2);
    server_ = std::make_unique<rpc::Server>(so);
    server_->AddService(service_.get());
    server_->AddService(shards_.get());
    control_ = std::make_unique<DatasetControlServiceImpl>(auth_.get(), registry_.get(),
                                                           executor_.get());
    server_->AddService(control_.get());
    ASSERT_THAT(server_->Start(), IsOk());
    server_->SetServing(true);
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    auto channel = *rpc::MakeChannel(co);
    stub_ = v1::DatasetService::NewStub(channel);
    shard_stub_ = internal::v1::ShardService::NewStub(channel);
    control_stub_ = internal::v1::DatasetControlService::NewStub(channel);
  }
  void Stop() {
    if (server_) server_->Shutdown();
    server_.reset();
    service_.reset();
    shards_.reset();
    control_.reset();
    executor_.reset();  // finishes queued validations first
    processor_.reset();
    registry_.reset();
  }

  absl::StatusOr<v1::File> Upload(const std::string& key, const std::string& content,
                                  const std::string& name = "train.jsonl",
                                  v1::FilePurpose purpose = v1::FILE_PURPOSE_FINE_TUNE,
                                  bool send_metadata = true, const std::string& sha = "") {
    v1::UploadFileRequest::Metadata meta;
    meta.set_filename(name);
    meta.set_purpose(purpose);
    meta.set_expected_sha256(sha);
    return UploadWith(key, send_metadata ? &meta : nullptr, content);
  }
  // The upload stream with the given metadata (nullptr: none) and content.
  absl::StatusOr<v1::File> UploadWith(const std::string& key,
                                      const v1::UploadFileRequest::Metadata* meta,
                                      const std::string& content) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    v1::File file;
    auto writer = stub_->UploadFile(&ctx, &file);
    v1::UploadFileRequest req;
    if (meta != nullptr) {
      *req.mutable_metadata() = *meta;
      writer->Write(req);
    }
    for (size_t pos = 0; pos < content.size(); pos += 64 << 10) {
      req.set_chunk(content.substr(pos, 64 << 10));
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return file;
  }
  absl::StatusOr<v1::File> Get(const std::string& key, const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(10));
    v1::GetFileRequest req;
    req.set_file_id(id);
    v1::File f;
    grpc::Status s = stub_->GetFile(&ctx, req, &f);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return f;
  }
  absl::StatusOr<v1::ListFilesResponse> List(const std::string& key, int page_size = 0,
                                             const std::string& token = "") {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(10));
    v1::ListFilesRequest req;
    req.set_page_size(page_size);
    req.set_page_token(token);
    v1::ListFilesResponse resp;
    grpc::Status s = stub_->ListFiles(&ctx, req, &resp);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return resp;
  }
  absl::Status Delete(const std::string& key, const std::string& id) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(10));
    v1::DeleteFileRequest req;
    req.set_file_id(id);
    v1::DeleteFileResponse resp;
    return rpc::FromGrpcStatus(stub_->DeleteFile(&ctx, req, &resp));
  }
  absl::StatusOr<std::string> Download(const std::string& key, const std::string& id,
                                       int64_t offset = 0) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    v1::GetFileContentRequest req;
    req.set_file_id(id);
    req.set_offset(offset);
    auto reader = stub_->GetFileContent(&ctx, req);
    std::string out;
    v1::FileChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != offset + static_cast<int64_t>(out.size())) {
        return absl::InternalError("chunk offsets out of order");
      }
      out += chunk.data();
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return out;
  }
  // The file once the automatic validation has finished (an upload is
  // queued for it before the upload call returns).
  absl::StatusOr<v1::File> WaitProcessed(const std::string& key, const std::string& id) {
    processor_->WaitUntilIdle();
    return Get(key, id);
  }
  absl::StatusOr<v1::ValidationReport> ValidateFile(const std::string& key,
                                                    v1::ValidateFileRequest req) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    v1::ValidationReport report;
    grpc::Status s = stub_->ValidateFile(&ctx, req, &report);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return report;
  }
  absl::StatusOr<internal::v1::ShardManifest> Prepare(const std::string& key,
                                                      const std::string& file_id,
                                                      int max_len = 4096,
                                                      const std::string& model = "byte-model") {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    internal::v1::PrepareShardsRequest req;
    req.set_file_id(file_id);
    req.set_tenant("tenant-a");
    req.set_base_model(model);
    req.set_max_sequence_length(max_len);
    internal::v1::ShardManifest m;
    grpc::Status s = shard_stub_->PrepareShards(&ctx, req, &m);
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return m;
  }
  absl::StatusOr<std::vector<internal::v1::ShardChunk>> Stream(const std::string& id, int rank,
                                                               int world, int64_t offset) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, internal_.key, absl::Seconds(30));
    internal::v1::StreamShardRequest req;
    req.set_shard_set_id(id);
    req.set_rank(rank);
    req.set_world_size(world);
    req.set_example_offset(offset);
    auto reader = shard_stub_->StreamShard(&ctx, req);
    std::vector<internal::v1::ShardChunk> chunks;
    internal::v1::ShardChunk c;
    while (reader->Read(&c)) chunks.push_back(c);
    grpc::Status s = reader->Finish();
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    return chunks;
  }
  size_t FilesOnDisk() {
    size_t n = 0;
    for (auto& e : std::filesystem::recursive_directory_iterator(dir_.Join("dataset/blobs"))) {
      if (e.is_regular_file()) ++n;
    }
    return n;
  }

  testing::TempDir dir_;
  rpc::NewKey a_ = rpc::GenerateKey("tenant-a", rpc::Role::kTenant, "a");
  rpc::NewKey b_ = rpc::GenerateKey("tenant-b", rpc::Role::kTenant, "b");
  rpc::NewKey internal_ = rpc::GenerateKey("", rpc::Role::kInternal, "svc");
  std::unique_ptr<FileRegistry> registry_;
  std::unique_ptr<rpc::Authenticator> auth_;
  std::unique_ptr<rpc::Executor> executor_;
  std::unique_ptr<FileProcessor> processor_;
  ByteTokenizerProvider tokenizers_;
  std::unique_ptr<DatasetServiceImpl> service_;
  std::unique_ptr<ShardServiceImpl> shards_;
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<v1::DatasetService::Stub> stub_;
  std::unique_ptr<internal::v1::ShardService::Stub> shard_stub_;
  std::unique_ptr<DatasetControlServiceImpl> control_;
  std::unique_ptr<internal::v1::DatasetControlService::Stub> control_stub_;
};

std::string Lines(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&s, R"({"messages": [{"role": "user", "content": "question )", i,
                    R"("}, {"role": "assistant", "content": "answer"}]})", "\n");
  }
  return s;
}

TEST_F(DatasetServiceTest, UploadGetDownloadRoundTrip) {
  std::string content = Lines(3000);  // several chunks
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  EXPECT_THAT(file.id(), ::testing::StartsWith("file-"));
  EXPECT_EQ(file.bytes(), static_cast<int64_t>(content.size()));
  EXPECT_EQ(file.sha256(), Sha256Hex(content));
  EXPECT_EQ(file.status(), v1::FILE_STATUS_UPLOADED);
  EXPECT_EQ(file.filename(), "train.jsonl");
  TF_ASSERT_OK_AND_ASSIGN(v1::File got, Get(a_.key, file.id()));
  EXPECT_EQ(got.sha256(), file.sha256());
  TF_ASSERT_OK_AND_ASSIGN(std::string back, Download(a_.key, file.id()));
  EXPECT_EQ(back, content);
  TF_ASSERT_OK_AND_ASSIGN(std::string tail, Download(a_.key, file.id(), 1000));
  EXPECT_EQ(tail, content.substr(1000));
  EXPECT_THAT(Download(a_.key, file.id(), content.size() + 1),
              StatusIs(absl::StatusCode::kOutOfRange));
}

TEST_F(DatasetServiceTest, UploadErrorsNameTheProblem) {
  EXPECT_THAT(Upload(a_.key, "x", "t.jsonl", v1::FILE_PURPOSE_FINE_TUNE, /*send_metadata=*/false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("first message")));
  EXPECT_THAT(Upload(a_.key, "x", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("metadata.filename")));
  const auto evil = Upload(a_.key, "x", "../evil");
  EXPECT_THAT(evil, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("metadata.filename")));
  ASSERT_EQ(errors::GetDetails(evil.status()).field_violations.size(), 1u);
  EXPECT_EQ(errors::GetDetails(evil.status()).field_violations[0].field, "metadata.filename");
  EXPECT_THAT(Upload(a_.key, "x", "t.jsonl", v1::FILE_PURPOSE_UNSPECIFIED),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("metadata.purpose")));
  EXPECT_THAT(Upload(a_.key, ""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(Upload(a_.key, std::string((1 << 20) + 1, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit of 1048576 bytes")));
  EXPECT_THAT(Upload(a_.key, "abc", "t.jsonl", v1::FILE_PURPOSE_FINE_TUNE, true,
                     std::string(64, '0')),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("expected_sha256")));
  EXPECT_THAT(Upload("tfk-wrong", "abc"), StatusIs(absl::StatusCode::kUnauthenticated));
  // Nothing of the failed uploads is visible or left on disk.
  TF_ASSERT_OK_AND_ASSIGN(auto list, List(a_.key));
  EXPECT_EQ(list.files_size(), 0);
  EXPECT_EQ(FilesOnDisk(), 0u);
}

TEST_F(DatasetServiceTest, ACancelledUploadLeavesNoFile) {
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, a_.key, absl::Seconds(30));
    v1::File file;
    auto writer = stub_->UploadFile(&ctx, &file);
    v1::UploadFileRequest req;
    req.mutable_metadata()->set_filename("t.jsonl");
    req.mutable_metadata()->set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
    ASSERT_TRUE(writer->Write(req));
    req.set_chunk(Lines(100));
    ASSERT_TRUE(writer->Write(req));
    ctx.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Shutting down waits for every call, the cancelled one included.
  server_->Shutdown();
  TF_ASSERT_OK_AND_ASSIGN(FilePage page, registry_->List("tenant-a", 10, "", Purpose::kUnspecified));
  EXPECT_TRUE(page.files.empty());
  EXPECT_EQ(FilesOnDisk(), 0u);
}

TEST_F(DatasetServiceTest, QuotaIsPerTenant) {
  std::string mib((1 << 20) - 10, 'x');
  for (int i = 0; i < 3; ++i) ASSERT_THAT(Upload(a_.key, mib), IsOk());
  EXPECT_THAT(Upload(a_.key, mib), StatusIs(absl::StatusCode::kResourceExhausted,
                                            HasSubstr("tenant-a")));
  EXPECT_THAT(Upload(b_.key, mib), IsOk());
}

TEST_F(DatasetServiceTest, TenantsNeverSeeEachOthersFiles) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(5)));
  // Another tenant: Get, Delete and Download look exactly like a missing id.
  absl::Status missing = Get(b_.key, "file-doesnotexist").status();
  absl::Status foreign = Get(b_.key, file.id()).status();
  EXPECT_THAT(foreign, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(foreign.message(), absl::StrCat("file ", file.id(), " not found"));
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Delete(b_.key, file.id()), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Download(b_.key, file.id()), StatusIs(absl::StatusCode::kNotFound));
  TF_ASSERT_OK_AND_ASSIGN(auto b_list, List(b_.key));
  EXPECT_EQ(b_list.files_size(), 0);
  // The owner still has it; an internal caller acting for tenant-b does not.
  EXPECT_THAT(Get(a_.key, file.id()), IsOk());
  EXPECT_THAT(Get(internal_.key, file.id()), StatusIs(absl::StatusCode::kPermissionDenied));
  // Bad ids are named.
  EXPECT_THAT(Get(a_.key, "ftjob-123"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a file id")));
}

TEST_F(DatasetServiceTest, ListPaginatesAndDeleteRemovesEverything) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    TF_ASSERT_OK_AND_ASSIGN(v1::File f, Upload(a_.key, Lines(1 + i)));
    ids.push_back(f.id());
  }
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    TF_ASSERT_OK_AND_ASSIGN(auto page, List(a_.key, 2, token));
    for (const auto& f : page.files()) seen.push_back(f.id());
    token = page.next_page_token();
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_THAT(seen, ::testing::UnorderedElementsAreArray(ids));
  EXPECT_THAT(List(a_.key, 2, "garbage!"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                    HasSubstr("page_token")));
  EXPECT_THAT(List(a_.key, -1), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("page_size")));

  EXPECT_THAT(Delete(a_.key, ids[0]), IsOk());
  EXPECT_THAT(Get(a_.key, ids[0]), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Delete(a_.key, ids[0]), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(FilesOnDisk(), 4u);
}

TEST_F(DatasetServiceTest, FilesSurviveRestart) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(10)));
  Stop();
  Start();
  TF_ASSERT_OK_AND_ASSIGN(v1::File got, Get(a_.key, file.id()));
  EXPECT_EQ(got.sha256(), file.sha256());
  TF_ASSERT_OK_AND_ASSIGN(std::string back, Download(a_.key, file.id()));
  EXPECT_EQ(back, Lines(10));
}

TEST_F(DatasetServiceTest, EveryUploadIsValidatedInTheBackground) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File good, Upload(a_.key, Lines(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::File processed, WaitProcessed(a_.key, good.id()));
  EXPECT_EQ(processed.status(), v1::FILE_STATUS_PROCESSED);
  EXPECT_EQ(processed.format(), v1::DATA_FORMAT_CHAT);
  EXPECT_TRUE(processed.validation().valid());
  EXPECT_EQ(processed.validation().statistics().examples(), 12);

  std::string bad = Lines(11) + "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n";
  TF_ASSERT_OK_AND_ASSIGN(v1::File uploaded, Upload(a_.key, bad));
  TF_ASSERT_OK_AND_ASSIGN(v1::File failed, WaitProcessed(a_.key, uploaded.id()));
  EXPECT_EQ(failed.status(), v1::FILE_STATUS_ERROR);
  EXPECT_THAT(failed.status_details(), HasSubstr("line 12 messages[0].role"));
  ASSERT_GE(failed.validation().issues_size(), 1);
  EXPECT_EQ(failed.validation().issues(0).line(), 12);
}

TEST_F(DatasetServiceTest, ValidationInterruptedByARestartIsRedone) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(10)));
  ASSERT_THAT(WaitProcessed(a_.key, file.id()), IsOk());
  // As if the process died while validating.
  ASSERT_THAT(registry_->SetStatus(file.id(), FileStatus::kProcessing, "", ""), IsOk());
  Stop();
  Start();
  TF_ASSERT_OK_AND_ASSIGN(v1::File again, WaitProcessed(a_.key, file.id()));
  EXPECT_EQ(again.status(), v1::FILE_STATUS_PROCESSED);
}

// A pass over a file stops between chunks once its caller went away (a
// ValidateFile whose deadline passed), instead of reading on for no one.
TEST(AnalyzeTest, StopsBetweenChunksOnceItsCallerWentAway) {
  std::string content;
  while (content.size() < (size_t{3} << 20)) {
    absl::StrAppend(&content, R"({"messages":[{"role":"user","content":"q"},)",
                    R"({"role":"assistant","content":"a"}]})", "\n");
  }
  store::MemoryArtifactStore store;
  ASSERT_THAT(store.Put("f", content).status(), IsOk());
  AnalyzeOptions options;
  int asked = 0;
  options.cancelled = [&] { return ++asked > 1; };
  auto reader = store.OpenReader("f", 0);
  ASSERT_THAT(reader, IsOk());
  EXPECT_THAT(Analyze(**reader, options),
              StatusIs(absl::StatusCode::kCancelled,
                       HasSubstr("stopped after 1048576 bytes: its caller went away")));
  EXPECT_EQ(asked, 2);
  // Never cancelled: the whole file.
  options.cancelled = [] { return false; };
  reader = store.OpenReader("f", 0);
  ASSERT_THAT(reader, IsOk());
  auto whole = Analyze(**reader, options);
  ASSERT_THAT(whole, IsOk());
  EXPECT_GT(whole->validation.examples, 30000);
}

TEST_F(DatasetServiceTest, ValidateFileReportsIssuesAndStatistics) {
  // 10 distinct examples, one exact duplicate, one without a system
  // message, one with three turns, and one bad line.
  std::string content;
  for (int i = 0; i < 10; ++i) {
    absl::StrAppend(&content, R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q)", i,
                    R"("}, {"role": "assistant", "content": "a"}]})", "\n");
  }
  absl::StrAppend(&content, R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q0"}, {"role": "assistant", "content": "a"}]})", "\n");
  absl::StrAppend(&content, R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]})", "\n");
  absl::StrAppend(&content, R"({"messages": [{"role": "user", "content": 5}]})", "\n");
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  v1::ValidateFileRequest req;
  req.set_file_id(file.id());
  req.set_max_issues(1);
  TF_ASSERT_OK_AND_ASSIGN(v1::ValidationReport r, ValidateFile(a_.key, req));
  EXPECT_FALSE(r.valid());
  ASSERT_EQ(r.issues_size(), 1);  // capped
  EXPECT_EQ(r.total_errors(), 2);  // content not a string, no assistant
  EXPECT_EQ(r.issues(0).line(), 13);
  EXPECT_EQ(r.issues(0).field(), "messages[0].content");
  const auto& st = r.statistics();
  EXPECT_EQ(st.examples(), 12);
  EXPECT_EQ(st.duplicate_examples(), 1);
  EXPECT_EQ(st.examples_missing_system(), 1);
  EXPECT_EQ(st.examples_missing_user(), 0);
  EXPECT_EQ(st.messages_per_example().min(), 3);
  EXPECT_EQ(st.messages_per_example().max(), 4);
  EXPECT_NEAR(st.messages_per_example().mean(), (11 * 3 + 4) / 12.0, 1e-9);
  EXPECT_EQ(r.epochs(), 1);

  // Caller mistakes are named.
  req.set_max_issues(-1);
  EXPECT_THAT(ValidateFile(a_.key, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_issues")));
  req.set_max_issues(0);
  req.set_base_model("phi-3-mini-4k-instruct");
  EXPECT_THAT(ValidateFile(a_.key, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("phi-3-mini-4k-instruct")));
  req.set_base_model("");
  EXPECT_THAT(ValidateFile(b_.key, req), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(DatasetServiceTest, ClassificationFilesAreRecognisedAndCounted) {
  std::string content;
  for (int i = 0; i < 12; ++i) {
    absl::StrAppend(&content, R"({"text": "item )", i, R"(", "label": ")",
                    i % 3 == 0 ? "neg" : "pos", R"("})", "\n");
  }
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(v1::File processed, WaitProcessed(a_.key, file.id()));
  EXPECT_EQ(processed.status(), v1::FILE_STATUS_PROCESSED);
  const auto& labels = processed.validation().statistics().label_counts();
  EXPECT_EQ(labels.at("neg"), 4);
  EXPECT_EQ(labels.at("pos"), 8);
}

TEST_F(DatasetServiceTest, PreferenceFilesAreRecognisedAndMixedFilesNameTheLine) {
  // 12 pairs: the same prompt and preferred answer, with distinct rejected
  // answers (not duplicates), then one exact repeat (a duplicate).
  auto pair = [](const std::string& rejected) {
    return absl::StrCat(
        R"({"input": {"messages": [{"role": "user", "content": "2+2?"}]}, "preferred_output": [{"role": "assistant", "content": "4"}], "non_preferred_output": [{"role": "assistant", "content": ")",
        rejected, R"("}]})", "\n");
  };
  std::string content;
  for (int i = 0; i < 12; ++i) absl::StrAppend(&content, pair(absl::StrCat(5 + i)));
  absl::StrAppend(&content, pair("5"));
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(v1::File processed, WaitProcessed(a_.key, file.id()));
  EXPECT_EQ(processed.status(), v1::FILE_STATUS_PROCESSED) << processed.status_details();
  const auto& st = processed.validation().statistics();
  EXPECT_EQ(st.examples(), 13);
  EXPECT_EQ(st.duplicate_examples(), 1);
  EXPECT_EQ(st.messages_per_example().max(), 2);  // the prompt and the preferred answer
  // Uploaded without a format, the file now says the one its lines have (a
  // job checks it: DPO needs preference data).
  EXPECT_EQ(file.format(), v1::DATA_FORMAT_UNSPECIFIED);
  EXPECT_EQ(processed.format(), v1::DATA_FORMAT_PREFERENCE);

  // Declared as preference, the same.
  v1::ValidateFileRequest req;
  req.set_file_id(file.id());
  req.set_format(v1::DATA_FORMAT_PREFERENCE);
  TF_ASSERT_OK_AND_ASSIGN(v1::ValidationReport declared, ValidateFile(a_.key, req));
  EXPECT_TRUE(declared.valid());
  EXPECT_EQ(declared.statistics().examples(), 13);

  // Read as chat, the first line already differs.
  req.set_format(v1::DATA_FORMAT_CHAT);
  TF_ASSERT_OK_AND_ASSIGN(v1::ValidationReport r, ValidateFile(a_.key, req));
  EXPECT_FALSE(r.valid());
  ASSERT_GE(r.issues_size(), 1);
  EXPECT_EQ(r.issues(0).line(), 1);
  EXPECT_EQ(r.issues(0).code(), "mixed_formats");
  EXPECT_THAT(r.issues(0).message(), HasSubstr("preference example, but the file is chat"));

  // A chat line among preference lines fails the file, naming that line.
  std::string mixed;
  for (int i = 0; i < 4; ++i) absl::StrAppend(&mixed, pair(absl::StrCat(5 + i)));
  absl::StrAppend(&mixed, Lines(1));
  for (int i = 0; i < 8; ++i) absl::StrAppend(&mixed, pair(absl::StrCat(10 + i)));
  TF_ASSERT_OK_AND_ASSIGN(v1::File uploaded, Upload(a_.key, mixed));
  TF_ASSERT_OK_AND_ASSIGN(v1::File failed, WaitProcessed(a_.key, uploaded.id()));
  EXPECT_EQ(failed.status(), v1::FILE_STATUS_ERROR);
  EXPECT_THAT(failed.status_details(),
              HasSubstr("line 5: line 5 is a chat example, but the file is preference (like line 1)"));
}

TEST_F(DatasetServiceTest, ToolCallsAndDuplicateKeysAreReportedByLineAndField) {
  std::string content = Lines(11);
  absl::StrAppend(&content,
                  R"({"messages": [{"role": "user", "content": "Weather?", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, {"role": "tool", "tool_call_id": "c2", "content": "sun"}, {"role": "assistant", "content": "Sunny."}]})",
                  "\n");
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(v1::File failed, WaitProcessed(a_.key, file.id()));
  EXPECT_EQ(failed.status(), v1::FILE_STATUS_ERROR);
  EXPECT_THAT(failed.status_details(), HasSubstr("line 12 messages[2].tool_call_id: "));
  const v1::ValidationReport& r = failed.validation();
  ASSERT_EQ(r.issues_size(), 2);
  EXPECT_EQ(r.issues(0).severity(), v1::ISSUE_SEVERITY_WARNING);
  EXPECT_EQ(r.issues(0).code(), "duplicate_key");
  EXPECT_EQ(r.issues(0).line(), 12);
  EXPECT_EQ(r.issues(0).field(), "messages[0].content");
  EXPECT_EQ(r.issues(1).code(), "unknown_tool_call_id");
}

absl::StatusOr<v1::SplitFileResponse> SplitRpc(v1::DatasetService::Stub* stub,
                                                const std::string& key, const std::string& id,
                                                double ratio, int64_t seed) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, key, absl::Seconds(30));
  v1::SplitFileRequest req;
  req.set_file_id(id);
  req.set_validation_ratio(ratio);
  req.set_seed(seed);
  v1::SplitFileResponse resp;
  grpc::Status s = stub->SplitFile(&ctx, req, &resp);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return resp;
}

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < s.size()) {
    size_t nl = s.find('\n', start);
    out.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

TEST_F(DatasetServiceTest, SplitIsDeterministicDisjointAndComplete) {
  std::string content = Lines(100);
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(auto first, SplitRpc(stub_.get(), a_.key, file.id(), 0.2, 42));
  TF_ASSERT_OK_AND_ASSIGN(auto again, SplitRpc(stub_.get(), a_.key, file.id(), 0.2, 42));
  TF_ASSERT_OK_AND_ASSIGN(auto other, SplitRpc(stub_.get(), a_.key, file.id(), 0.2, 7));
  EXPECT_EQ(first.training_file().purpose(), v1::FILE_PURPOSE_FINE_TUNE);
  EXPECT_EQ(first.validation_file().purpose(), v1::FILE_PURPOSE_VALIDATION);
  EXPECT_EQ(first.training_file().filename(), "train-train.jsonl");
  EXPECT_EQ(first.training_file().sha256(), again.training_file().sha256());
  EXPECT_EQ(first.validation_file().sha256(), again.validation_file().sha256());
  EXPECT_NE(first.validation_file().sha256(), other.validation_file().sha256());
  TF_ASSERT_OK_AND_ASSIGN(std::string train, Download(a_.key, first.training_file().id()));
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, Download(a_.key, first.validation_file().id()));
  std::vector<std::string> t = SplitLines(train), v = SplitLines(valid);
  EXPECT_EQ(v.size(), 20u);
  EXPECT_EQ(t.size(), 80u);
  std::vector<std::string> all = t;
  all.insert(all.end(), v.begin(), v.end());
  EXPECT_THAT(all, ::testing::UnorderedElementsAreArray(SplitLines(content)));
  // Both parts are validated like any upload.
  TF_ASSERT_OK_AND_ASSIGN(v1::File vf, WaitProcessed(a_.key, first.validation_file().id()));
  EXPECT_EQ(vf.status(), v1::FILE_STATUS_PROCESSED);
}

TEST_F(DatasetServiceTest, SplitRefusesBadInput) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(20)));
  const auto zero = SplitRpc(stub_.get(), a_.key, file.id(), 0, 1);
  EXPECT_THAT(zero, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("validation_ratio")));
  EXPECT_EQ(errors::GetDetails(zero.status()).reason, "INVALID_FIELD");
  ASSERT_EQ(errors::GetDetails(zero.status()).field_violations.size(), 1u);
  EXPECT_EQ(errors::GetDetails(zero.status()).field_violations[0].field, "validation_ratio");
  EXPECT_THAT(SplitRpc(stub_.get(), a_.key, file.id(), 0.7, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("(0, 0.5]")));
  EXPECT_THAT(SplitRpc(stub_.get(), b_.key, file.id(), 0.1, 1),
              StatusIs(absl::StatusCode::kNotFound));
  TF_ASSERT_OK_AND_ASSIGN(v1::File bad, Upload(a_.key, Lines(20) + "{oops\n"));
  EXPECT_THAT(SplitRpc(stub_.get(), a_.key, bad.id(), 0.1, 1),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("line 21")));
}

// Examples of the part, each as (ids, mask), from a list of chunks.
std::vector<std::pair<std::vector<int32_t>, std::string>> Examples(
    const std::vector<internal::v1::ShardChunk>& chunks) {
  std::vector<std::pair<std::vector<int32_t>, std::string>> out;
  for (const auto& c : chunks) {
    int pos = 0;
    for (int len : c.example_lengths()) {
      out.push_back({std::vector<int32_t>(c.token_ids().begin() + pos,
                                          c.token_ids().begin() + pos + len),
                     c.loss_mask().substr(pos, len)});
      pos += len;
    }
  }
  return out;
}

TEST_F(DatasetServiceTest, ShardsHoldEveryExampleOnceAcrossRanks) {
  std::string content = Lines(37);
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(auto m, Prepare(internal_.key, file.id()));
  // Counts computed independently of the shard code.
  int64_t tokens = 0, trained = 0;
  std::vector<std::vector<int32_t>> expected;
  JsonlValidator v({}, [&](const Example& ex) {
    auto t = *ByteTokenizerProvider::Tokenize(ex);
    tokens += t.ids.size();
    for (auto b : t.loss_mask) trained += b;
    expected.push_back(t.ids);
  });
  v.Feed(content);
  ASSERT_TRUE(v.Finish().valid());
  EXPECT_EQ(m.examples(), 37);
  EXPECT_EQ(m.tokens(), tokens);
  EXPECT_EQ(m.trained_tokens(), trained);
  EXPECT_THAT(m.shard_set_id(), ::testing::StartsWith("shard-"));
  // Cached: the same inputs give the same shard set.
  TF_ASSERT_OK_AND_ASSIGN(auto again, Prepare(internal_.key, file.id()));
  EXPECT_EQ(again.shard_set_id(), m.shard_set_id());
  EXPECT_EQ(again.sha256(), m.sha256());

  std::vector<std::vector<int32_t>> all;
  for (int rank = 0; rank < 4; ++rank) {
    TF_ASSERT_OK_AND_ASSIGN(auto chunks, Stream(m.shard_set_id(), rank, 4, 0));
    ASSERT_FALSE(chunks.empty());
    EXPECT_TRUE(chunks.back().last());
    auto part = Examples(chunks);
    EXPECT_NEAR(static_cast<double>(part.size()), 37.0 / 4, 1.0);
    for (auto& [ids, mask] : part) all.push_back(ids);
  }
  EXPECT_EQ(all, expected);
}

TEST_F(DatasetServiceTest, ShardStreamsResumeIdenticallyAtAnOffset) {
  // Long enough that the stream needs several batches.
  std::string content;
  for (int i = 0; i < 300; ++i) {
    absl::StrAppend(&content, R"({"messages": [{"role": "user", "content": ")",
                    std::string(400 + i, 'q'), R"("}, {"role": "assistant", "content": ")",
                    std::string(500, 'a'), R"("}]})", "\n");
  }
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  TF_ASSERT_OK_AND_ASSIGN(auto m, Prepare(internal_.key, file.id()));
  TF_ASSERT_OK_AND_ASSIGN(auto full, Stream(m.shard_set_id(), 1, 2, 0));
  ASSERT_GE(full.size(), 2u);
  auto full_examples = Examples(full);
  ASSERT_EQ(full_examples.size(), 150u);
  for (int64_t offset : {int64_t{1}, full[1].first_example(), int64_t{149}, int64_t{150}}) {
    TF_ASSERT_OK_AND_ASSIGN(auto resumed, Stream(m.shard_set_id(), 1, 2, offset));
    ASSERT_FALSE(resumed.empty()) << offset;
    EXPECT_EQ(resumed.front().first_example(), offset);
    auto tail = Examples(resumed);
    EXPECT_TRUE(std::equal(tail.begin(), tail.end(), full_examples.begin() + offset)) << offset;
    // The running checksum covers the part from its start either way.
    EXPECT_EQ(resumed.back().running_sha256(), full.back().running_sha256()) << offset;
    EXPECT_TRUE(resumed.back().last());
  }
}

TEST_F(DatasetServiceTest, ShardErrorsAreNamed) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(12)));
  EXPECT_THAT(Prepare(a_.key, file.id()), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Prepare(internal_.key, file.id(), 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_sequence_length")));
  EXPECT_THAT(Prepare(internal_.key, file.id(), 64, "llama-9000"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("llama-9000")));
  TF_ASSERT_OK_AND_ASSIGN(auto m, Prepare(internal_.key, file.id()));
  EXPECT_THAT(Stream(m.shard_set_id(), 2, 2, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank 2")));
  EXPECT_THAT(Stream(m.shard_set_id(), 0, 2, 7),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("example_offset 7")));
  EXPECT_THAT(Stream("shard-doesnotexist", 0, 1, 0), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Stream("file-x", 0, 1, 0), StatusIs(absl::StatusCode::kInvalidArgument));
  // Truncation at the maximum length.
  TF_ASSERT_OK_AND_ASSIGN(auto short_m, Prepare(internal_.key, file.id(), 20));
  EXPECT_EQ(short_m.tokens(), 12 * 20);
  EXPECT_NE(short_m.shard_set_id(), m.shard_set_id());
  // Invalid files are not sharded.
  TF_ASSERT_OK_AND_ASSIGN(v1::File bad, Upload(a_.key, Lines(12) + "[]\n"));
  EXPECT_THAT(Prepare(internal_.key, bad.id()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("line 13")));
}

TEST_F(DatasetServiceTest, ValidateFileCountsTokensWithTheModelsTokenizer) {
  std::string content = Lines(10);
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, content));
  v1::ValidateFileRequest req;
  req.set_file_id(file.id());
  req.set_base_model("byte-model");
  req.set_max_sequence_length(18);
  req.set_epochs(3);
  TF_ASSERT_OK_AND_ASSIGN(v1::ValidationReport r, ValidateFile(a_.key, req));
  int64_t total = 0, trained = 0, over = 0, cut = 0;
  JsonlValidator v({}, [&](const Example& ex) {
    auto t = *ByteTokenizerProvider::Tokenize(ex);
    total += t.ids.size();
    for (auto b : t.loss_mask) trained += b;
    if (t.ids.size() > 18) {
      ++over;
      cut += t.ids.size() - 18;
    }
  });
  v.Feed(content);
  (void)v.Finish();
  EXPECT_EQ(r.statistics().total_tokens(), total);
  EXPECT_EQ(r.statistics().trained_tokens(), trained);
  EXPECT_EQ(r.statistics().examples_over_max_length(), over);
  EXPECT_EQ(r.statistics().tokens_truncated(), cut);
  EXPECT_EQ(r.trained_tokens_per_epoch(), trained);
  EXPECT_EQ(r.estimated_trained_tokens(), 3 * trained);
  EXPECT_GT(over, 0);
}

TEST_F(DatasetServiceTest, DeleteIsRefusedWhileAnUnfinishedJobHoldsTheFile) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, Upload(a_.key, Lines(10)));
  auto hold = [&](const std::string& key, const std::string& tenant, const std::string& holder) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(10));
    internal::v1::HoldFileRequest req;
    req.set_file_id(file.id());
    req.set_tenant(tenant);
    req.set_holder(holder);
    internal::v1::HoldFileResponse resp;
    return rpc::FromGrpcStatus(control_stub_->HoldFile(&ctx, req, &resp));
  };
  auto release = [&](const std::string& holder) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, internal_.key, absl::Seconds(10));
    internal::v1::ReleaseFileRequest req;
    req.set_file_id(file.id());
    req.set_holder(holder);
    internal::v1::ReleaseFileResponse resp;
    return rpc::FromGrpcStatus(control_stub_->ReleaseFile(&ctx, req, &resp));
  };
  EXPECT_THAT(hold(a_.key, "tenant-a", "ftjob-one"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(hold(internal_.key, "tenant-b", "ftjob-one"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(hold(internal_.key, "tenant-a", ""), StatusIs(absl::StatusCode::kInvalidArgument));
  TF_ASSERT_OK(hold(internal_.key, "tenant-a", "ftjob-one"));
  TF_ASSERT_OK(hold(internal_.key, "tenant-a", "ftjob-one"));  // idempotent
  TF_ASSERT_OK(hold(internal_.key, "tenant-a", "ftjob-two"));
  const absl::Status held = Delete(a_.key, file.id());
  EXPECT_THAT(held,
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ftjob-one, ftjob-two")));
  // The holders travel as structured details, one violation each.
  const errors::Details details = errors::GetDetails(held);
  EXPECT_EQ(details.reason, "FILE_IN_USE");
  EXPECT_EQ(details.metadata.at("file_id"), file.id());
  ASSERT_EQ(details.precondition_violations.size(), 2u);
  EXPECT_EQ(details.precondition_violations[0].type, "FILE_HELD");
  EXPECT_EQ(details.precondition_violations[0].subject, "ftjob-one");
  EXPECT_EQ(details.precondition_violations[1].subject, "ftjob-two");
  TF_ASSERT_OK(release("ftjob-one"));
  EXPECT_THAT(Delete(a_.key, file.id()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ftjob-two")));
  TF_ASSERT_OK(release("ftjob-two"));
  TF_ASSERT_OK(release("ftjob-two"));  // idempotent
  EXPECT_THAT(Delete(a_.key, file.id()), IsOk());
}

TEST(ChooseValidation, StratifiedByLabelAndStable) {
  std::vector<std::string> groups;
  for (int i = 0; i < 60; ++i) groups.push_back(i % 3 == 0 ? "rare" : "common");
  std::vector<bool> chosen = ChooseValidation(groups, 0.25, 123);
  int rare = 0, common = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (chosen[i]) (groups[i] == "rare" ? rare : common)++;
  }
  EXPECT_EQ(rare, 5);     // round(20 * 0.25)
  EXPECT_EQ(common, 10);  // round(40 * 0.25)
  EXPECT_EQ(chosen, ChooseValidation(groups, 0.25, 123));
  // Tiny inputs still give both parts something.
  std::vector<bool> two = ChooseValidation({"", ""}, 0.1, 5);
  EXPECT_EQ(std::count(two.begin(), two.end(), true), 1);
}

v1::UploadFileRequest::Metadata Meta(const std::string& name,
                                     std::map<std::string, std::string> labels = {},
                                     const std::string& request_id = "") {
  v1::UploadFileRequest::Metadata m;
  m.set_filename(name);
  m.set_purpose(v1::FILE_PURPOSE_FINE_TUNE);
  m.mutable_labels()->insert(labels.begin(), labels.end());
  m.set_request_id(request_id);
  return m;
}

TEST_F(DatasetServiceTest, LabelsAndDescriptionAreKeptAndFilterTheList) {
  v1::UploadFileRequest::Metadata m = Meta("a.jsonl", {{"team", "nlp"}, {"env", "prod"}});
  m.set_description("support tickets, 2026 Q3");
  TF_ASSERT_OK_AND_ASSIGN(v1::File a, UploadWith(a_.key, &m, Lines(12)));
  m = Meta("b.jsonl", {{"team", "nlp"}, {"env", "dev"}});
  TF_ASSERT_OK_AND_ASSIGN(v1::File b, UploadWith(a_.key, &m, Lines(12)));
  m = Meta("c.jsonl");
  TF_ASSERT_OK_AND_ASSIGN(v1::File c, UploadWith(a_.key, &m, Lines(12)));
  EXPECT_EQ(a.labels().at("team"), "nlp");
  EXPECT_EQ(a.description(), "support tickets, 2026 Q3");

  auto list = [&](std::map<std::string, std::string> labels) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, a_.key, absl::Seconds(10));
    v1::ListFilesRequest req;
    req.mutable_labels()->insert(labels.begin(), labels.end());
    v1::ListFilesResponse resp;
    grpc::Status s = stub_->ListFiles(&ctx, req, &resp);
    std::vector<std::string> ids;
    if (!s.ok()) ids.push_back(absl::StrCat("error: ", s.error_message()));
    for (const v1::File& f : resp.files()) ids.push_back(f.id());
    return ids;
  };
  EXPECT_THAT(list({{"team", "nlp"}}), ::testing::UnorderedElementsAre(a.id(), b.id()));
  EXPECT_THAT(list({{"team", "nlp"}, {"env", "prod"}}), ::testing::ElementsAre(a.id()));
  EXPECT_THAT(list({{"env", "staging"}}), ::testing::IsEmpty());
  EXPECT_THAT(list({}), ::testing::UnorderedElementsAre(a.id(), b.id(), c.id()));
  EXPECT_THAT(list({{"Team", "x"}}),
              ::testing::ElementsAre(HasSubstr("labels[\"Team\"]: the key must be of")));

  // Bad labels on upload name the label; nothing is stored.
  m = Meta("d.jsonl", {{"-bad", "x"}, {"ok", "no spaces allowed"}});
  absl::StatusOr<v1::File> bad = UploadWith(a_.key, &m, Lines(12));
  ASSERT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument));
  errors::Details d = errors::GetDetails(bad.status());
  ASSERT_EQ(d.field_violations.size(), 2u);
  EXPECT_EQ(d.field_violations[0].field, "metadata.labels[\"-bad\"]");
  EXPECT_EQ(d.field_violations[1].field, "metadata.labels[\"ok\"]");
  EXPECT_THAT(d.field_violations[1].description, HasSubstr("[A-Za-z0-9._-]"));

  // Labels survive a restart.
  Stop();
  Start();
  TF_ASSERT_OK_AND_ASSIGN(v1::File again, Get(a_.key, a.id()));
  EXPECT_EQ(again.labels().at("env"), "prod");
  EXPECT_EQ(again.description(), "support tickets, 2026 Q3");
}

TEST_F(DatasetServiceTest, UploadRequestIdMakesARetryReturnTheFirstFile) {
  v1::UploadFileRequest::Metadata m = Meta("a.jsonl", {}, "upload-7");
  TF_ASSERT_OK_AND_ASSIGN(v1::File first, UploadWith(a_.key, &m, Lines(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::File retry, UploadWith(a_.key, &m, Lines(12)));
  EXPECT_EQ(retry.id(), first.id());
  // The same key from another tenant is another upload.
  TF_ASSERT_OK_AND_ASSIGN(v1::File other_tenant, UploadWith(b_.key, &m, Lines(12)));
  EXPECT_NE(other_tenant.id(), first.id());
  // Other bytes under the same key are refused, naming the first file.
  absl::StatusOr<v1::File> clash = UploadWith(a_.key, &m, Lines(13));
  EXPECT_THAT(clash, StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(first.id())));
  EXPECT_EQ(errors::GetDetails(clash.status()).reason, "REQUEST_ID_REUSED");
  TF_ASSERT_OK_AND_ASSIGN(v1::ListFilesResponse all, List(a_.key));
  EXPECT_EQ(all.files_size(), 1);
  EXPECT_EQ(FilesOnDisk(), 2u);  // one blob per tenant: the retries left nothing behind
}

TEST_F(DatasetServiceTest, ListFilesLeavesTheReportOutUnlessAskedForTheFullView) {
  TF_ASSERT_OK_AND_ASSIGN(v1::File f, Upload(a_.key, Lines(12)));
  TF_ASSERT_OK_AND_ASSIGN(v1::File processed, WaitProcessed(a_.key, f.id()));
  ASSERT_TRUE(processed.has_validation());
  auto list = [&](v1::FileView view) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, a_.key, absl::Seconds(10));
    v1::ListFilesRequest req;
    req.set_view(view);
    v1::ListFilesResponse resp;
    EXPECT_TRUE(stub_->ListFiles(&ctx, req, &resp).ok());
    return resp;
  };
  v1::ListFilesResponse basic = list(v1::FILE_VIEW_UNSPECIFIED);
  ASSERT_EQ(basic.files_size(), 1);
  EXPECT_FALSE(basic.files(0).has_validation());
  EXPECT_EQ(basic.files(0).status(), v1::FILE_STATUS_PROCESSED);
  v1::ListFilesResponse full = list(v1::FILE_VIEW_FULL);
  ASSERT_EQ(full.files_size(), 1);
  EXPECT_EQ(full.files(0).validation().statistics().examples(), 12);

  // A view the API does not define is named.
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, a_.key, absl::Seconds(10));
  v1::ListFilesRequest bad;
  bad.set_view(static_cast<v1::FileView>(7));
  v1::ListFilesResponse resp;
  absl::Status s = rpc::FromGrpcStatus(stub_->ListFiles(&ctx, bad, &resp));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("view")));
  ASSERT_EQ(errors::GetDetails(s).field_violations.size(), 1u);
  EXPECT_EQ(errors::GetDetails(s).field_violations[0].field, "view");
}

TEST_F(DatasetServiceTest, SplitRequestIdReturnsTheSameFilesWhichCarryTheLabels) {
  v1::UploadFileRequest::Metadata m = Meta("all.jsonl", {{"team", "nlp"}});
  m.set_description("everything");
  TF_ASSERT_OK_AND_ASSIGN(v1::File file, UploadWith(a_.key, &m, Lines(40)));
  auto split = [&](const std::string& request_id, int64_t seed) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, a_.key, absl::Seconds(30));
    v1::SplitFileRequest req;
    req.set_file_id(file.id());
    req.set_validation_ratio(0.25);
    req.set_seed(seed);
    req.set_request_id(request_id);
    v1::SplitFileResponse resp;
    EXPECT_TRUE(stub_->SplitFile(&ctx, req, &resp).ok());
    return resp;
  };
  v1::SplitFileResponse first = split("split-1", 1);
  v1::SplitFileResponse retry = split("split-1", 1);
  EXPECT_EQ(retry.training_file().id(), first.training_file().id());
  EXPECT_EQ(retry.validation_file().id(), first.validation_file().id());
  EXPECT_NE(split("split-2", 1).training_file().id(), first.training_file().id());
  EXPECT_EQ(first.training_file().labels().at("team"), "nlp");
  EXPECT_EQ(first.validation_file().description(), "everything");

  // An over-long key is refused, naming the field.
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, a_.key, absl::Seconds(30));
  v1::SplitFileRequest req;
  req.set_file_id(file.id());
  req.set_validation_ratio(0.25);
  req.set_request_id(std::string(129, 'k'));
  v1::SplitFileResponse resp;
  absl::Status s = rpc::FromGrpcStatus(stub_->SplitFile(&ctx, req, &resp));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
  ASSERT_EQ(errors::GetDetails(s).field_violations.size(), 1u);
  EXPECT_EQ(errors::GetDetails(s).field_violations[0].field, "request_id");
}

}  // namespace
}  // namespace tunefleet::dataset
