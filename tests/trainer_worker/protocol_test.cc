// The worker <-> agent protocol: spec JSON, report lines, shard files.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "services/trainer/protocol/report.h"
#include "services/trainer/protocol/shard_file.h"
#include "services/trainer/protocol/worker_spec.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tunefleet::trainer {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

WorkerSpec SampleSpec() {
  WorkerSpec s;
  s.job_id = "ftjob-1";
  s.assignment_id = "asg-1";
  s.rank = 1;
  s.world_size = 2;
  s.master_port = 29500;
  s.base_model_dir = "/models/phi";
  s.init_adapter_dir = "/a/adapter";
  s.train_shards = {"/c/train-0.shard"};
  s.valid_shards = {"/c/valid-0.shard", "/c/valid-1.shard"};
  s.output_dir = "/out";
  s.checkpoint_root = "/ckpt";
  s.resume_from = "/ckpt/step-00000010";
  s.method = TrainingMethod::kFull;
  s.task = TrainingTask::kClassification;
  s.num_labels = 3;
  s.label_names = {"negative", "neutral", "positive"};
  s.write_merged = true;
  s.hyper.epochs = 3;
  s.hyper.batch_size = 8;
  s.hyper.micro_batch_size = 2;
  s.hyper.learning_rate = 2e-4;
  s.hyper.weight_decay = 0.01;
  s.hyper.lr_scheduler = LrScheduler::kLinear;
  s.hyper.warmup_ratio = 0.1;
  s.hyper.lora_target_modules = {"qkv_proj"};
  s.hyper.packing = false;
  s.hyper.seed = 42;
  s.hyper.max_steps = 7;
  s.collective_timeout_s = 30;
  return s;
}

TEST(WorkerSpecTest, RoundTrips) {
  WorkerSpec s = SampleSpec();
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec back, ParseWorkerSpec(WorkerSpecToJson(s)));
  EXPECT_EQ(WorkerSpecToJson(back), WorkerSpecToJson(s));
  EXPECT_EQ(back.rank, 1);
  EXPECT_EQ(back.method, TrainingMethod::kFull);
  EXPECT_EQ(back.task, TrainingTask::kClassification);
  EXPECT_EQ(back.hyper.lr_scheduler, LrScheduler::kLinear);
  EXPECT_EQ(back.valid_shards.size(), 2u);
  EXPECT_EQ(back.hyper.micro_batch_size, 2);
  EXPECT_DOUBLE_EQ(back.hyper.learning_rate, 2e-4);
  EXPECT_FALSE(back.hyper.packing);
  EXPECT_EQ(back.label_names, (std::vector<std::string>{"negative", "neutral", "positive"}));
  EXPECT_TRUE(back.write_merged);
}

TEST(WorkerSpecTest, FileRoundTrip) {
  testing::TempDir dir;
  TF_ASSERT_OK(WriteWorkerSpecFile(SampleSpec(), dir.Join("spec.json")));
  TF_ASSERT_OK_AND_ASSIGN(WorkerSpec back, ReadWorkerSpecFile(dir.Join("spec.json")));
  EXPECT_EQ(back.job_id, "ftjob-1");
  EXPECT_THAT(ReadWorkerSpecFile(dir.Join("missing.json")), StatusIs(absl::StatusCode::kNotFound));
}

TEST(WorkerSpecTest, ErrorsNameTheField) {
  WorkerSpec s = SampleSpec();
  s.hyper.learning_rate = std::numeric_limits<double>::quiet_NaN();
  // JSON writes NaN as null; either way the field is named.
  EXPECT_THAT(ParseWorkerSpec(WorkerSpecToJson(s)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hyperparameters.learning_rate")));
  EXPECT_THAT(ValidateWorkerSpec(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hyperparameters.learning_rate")));
  EXPECT_THAT(ParseWorkerSpec(R"({"method":"qlora"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("method")));
  EXPECT_THAT(ParseWorkerSpec(R"({"rank":"zero"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank")));
  EXPECT_THAT(ParseWorkerSpec("not json"), StatusIs(absl::StatusCode::kInvalidArgument));
  s = SampleSpec();
  s.hyper.micro_batch_size = 3;  // per-rank batch is 4
  EXPECT_THAT(ValidateWorkerSpec(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("micro_batch_size")));
  s = SampleSpec();
  s.rank = 2;
  EXPECT_THAT(ValidateWorkerSpec(s), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank")));
  s = SampleSpec();
  s.label_names.pop_back();  // 2 names for num_labels 3
  EXPECT_THAT(ValidateWorkerSpec(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("label_names")));
  s = SampleSpec();
  s.label_names[2] = "negative";
  EXPECT_THAT(ValidateWorkerSpec(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'negative' appears twice")));
  EXPECT_THAT(ParseWorkerSpec(R"({"label_names":"a"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("label_names")));
  s = SampleSpec();
  s.base_model_dir.clear();
  EXPECT_THAT(ValidateWorkerSpec(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model_dir")));
}

TEST(ReportTest, EveryEventRoundTrips) {
  ReportEvent p;
  p.kind = ReportKind::kProgress;
  p.step = 5;
  p.total_steps = 20;
  p.epoch = 0.25;
  p.train_loss = 1.5;
  p.train_token_accuracy = 0.5;
  p.learning_rate = 1e-4;
  p.tokens_per_second = 1234.5;
  p.trained_tokens = 999;
  TF_ASSERT_OK_AND_ASSIGN(ReportEvent back, ParseReportLine(FormatReportLine(p)));
  EXPECT_EQ(back.kind, ReportKind::kProgress);
  EXPECT_EQ(back.step, 5);
  EXPECT_EQ(back.total_steps, 20);
  EXPECT_DOUBLE_EQ(*back.train_loss, 1.5);
  EXPECT_DOUBLE_EQ(*back.learning_rate, 1e-4);
  EXPECT_EQ(back.trained_tokens, 999);
  EXPECT_FALSE(back.valid_loss.has_value());

  ReportEvent c;
  c.kind = ReportKind::kCheckpoint;
  c.step = 10;
  c.checkpoint_dir = "/ckpt/step-00000010";
  c.metrics["train_loss"] = 0.7;
  std::string line = FormatReportLine(c);
  EXPECT_THAT(line, HasSubstr(R"("dir":"/ckpt/step-00000010")"));
  EXPECT_EQ(line.find('\n'), std::string::npos);
  TF_ASSERT_OK_AND_ASSIGN(back, ParseReportLine(line + "\n"));
  EXPECT_EQ(back.kind, ReportKind::kCheckpoint);
  EXPECT_EQ(back.checkpoint_dir, c.checkpoint_dir);
  EXPECT_DOUBLE_EQ(back.metrics.at("train_loss"), 0.7);

  ReportEvent done;
  done.kind = ReportKind::kCompleted;
  done.result_dir = "/out";
  done.trained_tokens = 42;
  done.valid_loss = 0.5;
  done.base_valid_loss = 2.5;
  TF_ASSERT_OK_AND_ASSIGN(back, ParseReportLine(FormatReportLine(done)));
  EXPECT_EQ(back.result_dir, "/out");
  EXPECT_DOUBLE_EQ(*back.base_valid_loss, 2.5);

  ReportEvent stop;
  stop.kind = ReportKind::kStopped;
  stop.checkpoint_dir = "/ckpt/step-3";
  TF_ASSERT_OK_AND_ASSIGN(back, ParseReportLine(FormatReportLine(stop)));
  EXPECT_EQ(back.kind, ReportKind::kStopped);
  EXPECT_EQ(back.checkpoint_dir, "/ckpt/step-3");

  ReportEvent err = ErrorEvent(absl::InvalidArgumentError("base model \"x\": no config.json"));
  TF_ASSERT_OK_AND_ASSIGN(back, ParseReportLine(FormatReportLine(err)));
  EXPECT_EQ(back.kind, ReportKind::kError);
  EXPECT_EQ(back.code, "INVALID_ARGUMENT");
  EXPECT_EQ(ParseStatusCode(back.code), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(back.message, "base model \"x\": no config.json");
}

TEST(ReportTest, DpoMetricsAndEarlyStoppingRoundTripAndOldLinesStayTheSame) {
  ReportEvent p;
  p.kind = ReportKind::kProgress;
  p.step = 3;
  p.train_loss = 0.6;
  p.train_token_accuracy = 0.75;  // DPO: reward accuracy
  p.metrics["reward_margin"] = 0.25;
  TF_ASSERT_OK_AND_ASSIGN(ReportEvent back, ParseReportLine(FormatReportLine(p)));
  EXPECT_EQ(back.metrics.at("reward_margin"), 0.25);
  // A progress line without metrics has no "metrics" key (as before).
  p.metrics.clear();
  EXPECT_THAT(FormatReportLine(p), ::testing::Not(HasSubstr("metrics")));

  ReportEvent c;
  c.kind = ReportKind::kCompleted;
  c.result_dir = "/r";
  EXPECT_THAT(FormatReportLine(c), ::testing::Not(HasSubstr("stopped_early")));
  c.stopped_early = true;
  TF_ASSERT_OK_AND_ASSIGN(back, ParseReportLine(FormatReportLine(c)));
  EXPECT_TRUE(back.stopped_early);
  EXPECT_THAT(ParseReportLine(R"({"event":"completed","stopped_early":1})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stopped_early")));
}

TEST(ReportTest, NonFiniteNumbersAreLeftOut) {
  ReportEvent p;
  p.kind = ReportKind::kProgress;
  p.train_loss = std::nan("");
  TF_ASSERT_OK_AND_ASSIGN(ReportEvent back, ParseReportLine(FormatReportLine(p)));
  EXPECT_FALSE(back.train_loss.has_value());
}

TEST(ReportTest, BadLinesAreInvalidArgument) {
  EXPECT_THAT(ParseReportLine("garbage"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseReportLine(R"({"event":"exploded"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exploded")));
  EXPECT_THAT(ParseReportLine(R"({"event":"progress","step":"x"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("step")));
  EXPECT_THAT(ParseReportLine(R"({"event":"error"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("code")));
}

TEST(ReportTest, WriterAndSplitterOverAPipe) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ReportWriter w(fds[1]);
  ReportEvent e;
  e.kind = ReportKind::kStarted;
  e.total_steps = 3;
  TF_ASSERT_OK(w.Write(e));
  e.kind = ReportKind::kEval;
  e.valid_loss = 1.0;
  TF_ASSERT_OK(w.Write(e));
  ::close(fds[1]);
  ReportLineSplitter split;
  std::vector<std::string> lines;
  char buf[7];  // small reads split lines across calls
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) {
    for (std::string& l : split.Add(absl::string_view(buf, n))) lines.push_back(std::move(l));
  }
  ::close(fds[0]);
  EXPECT_EQ(split.TakeRest(), "");
  ASSERT_EQ(lines.size(), 2u);
  TF_ASSERT_OK_AND_ASSIGN(ReportEvent a, ParseReportLine(lines[0]));
  EXPECT_EQ(a.kind, ReportKind::kStarted);
  EXPECT_EQ(a.total_steps, 3);
  TF_ASSERT_OK_AND_ASSIGN(ReportEvent b, ParseReportLine(lines[1]));
  EXPECT_EQ(b.kind, ReportKind::kEval);
}

TEST(ShardFileTest, WriteReadRoundTrip) {
  testing::TempDir dir;
  const std::string path = dir.Join("train.shard");
  TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(path, 100));
  // A StreamShard-like chunk of two examples, then one more example.
  std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  std::string mask = {0, 0, 1, 0, 1};
  TF_ASSERT_OK(w->AddChunk(ids, mask, std::vector<int32_t>{3, 2}));
  std::vector<int32_t> ids2 = {7, 99};
  std::vector<uint8_t> mask2 = {1, 1};
  TF_ASSERT_OK(w->AddExample(ids2, mask2, 4));
  EXPECT_FALSE(std::ifstream(path).good()) << "visible before Finish";
  TF_ASSERT_OK(w->Finish());

  TF_ASSERT_OK_AND_ASSIGN(ShardFile f, ShardFile::Read(path));
  EXPECT_EQ(f.size(), 3);
  EXPECT_EQ(f.info().num_tokens, 7u);
  EXPECT_EQ(f.info().trained_tokens, 4u);
  EXPECT_EQ(f.info().vocab_size, 100u);
  EXPECT_EQ(f.info().max_token_id, 99);
  EXPECT_THAT(std::vector<int32_t>(f.example(0).token_ids.begin(), f.example(0).token_ids.end()),
              ::testing::ElementsAre(1, 2, 3));
  EXPECT_THAT(std::vector<uint8_t>(f.example(1).loss_mask.begin(), f.example(1).loss_mask.end()),
              ::testing::ElementsAre(0, 1));
  EXPECT_EQ(f.example(0).label, -1);
  EXPECT_EQ(f.example(2).label, 4);
}

TEST(ShardFileTest, BadInputIsRefused) {
  testing::TempDir dir;
  TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(dir.Join("a.shard"), 10));
  std::vector<int32_t> ids = {1, 10};
  std::vector<uint8_t> mask = {1, 1};
  EXPECT_THAT(w->AddExample(ids, mask), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("10")));
  EXPECT_THAT(w->AddChunk(ids, std::string(1, '\1'), std::vector<int32_t>{2}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(w->AddChunk(std::vector<int32_t>{1, 2}, std::string(2, '\1'), std::vector<int32_t>{1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cover")));
  w.reset();  // unfinished: nothing left behind
  EXPECT_FALSE(std::ifstream(dir.Join("a.shard")).good());
}

TEST(ShardFileTest, CorruptionIsAClearError) {
  testing::TempDir dir;
  const std::string path = dir.Join("c.shard");
  {
    TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(path, 50));
    std::vector<int32_t> ids = {1, 2, 3, 4};
    std::vector<uint8_t> mask = {0, 1, 1, 1};
    for (int i = 0; i < 3; ++i) TF_ASSERT_OK(w->AddExample(ids, mask));
    TF_ASSERT_OK(w->Finish());
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << b;
  };
  std::string flipped = bytes;
  flipped[70] ^= 0x01;
  write(flipped);
  EXPECT_THAT(ShardFile::Read(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("checksum")));
  write(bytes.substr(0, bytes.size() - 3));
  EXPECT_THAT(ShardFile::Read(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("truncated")));
  write("garbage that is long enough to hold a header but is not one at all, no........");
  EXPECT_THAT(ShardFile::Read(path), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("magic")));
  EXPECT_THAT(ShardFile::Read(dir.Join("none.shard")), StatusIs(absl::StatusCode::kNotFound));
}

TEST(ShardFileTest, PreferencePairsAreMarkedAndChecked) {
  testing::TempDir dir;
  const std::string path = dir.Join("pairs.shard");
  std::vector<int32_t> ids = {1, 2, 3, 4};
  std::vector<uint8_t> mask = {0, 0, 1, 1};
  {
    TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(path, 50));
    TF_ASSERT_OK(w->SetPairs(true));
    // Labels follow from the position; a contradicting one is refused.
    TF_ASSERT_OK(w->AddExample(ids, mask));
    EXPECT_THAT(w->AddExample(ids, mask, kChosenLabel),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rejected")));
    TF_ASSERT_OK(w->AddExample(ids, mask, kRejectedLabel));
    EXPECT_THAT(w->SetPairs(false), StatusIs(absl::StatusCode::kFailedPrecondition));
    TF_ASSERT_OK(w->AddExample(ids, mask));
    // Three examples: a pair would be split.
    EXPECT_THAT(w->Finish(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("split")));
    TF_ASSERT_OK(w->AddExample(ids, mask));
    TF_ASSERT_OK(w->Finish());
  }
  TF_ASSERT_OK_AND_ASSIGN(ShardFile f, ShardFile::Read(path));
  EXPECT_TRUE(f.info().pairs);
  ASSERT_EQ(f.size(), 4);
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_EQ(f.example(i).label, i % 2 == 0 ? kChosenLabel : kRejectedLabel);

  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  uint32_t version, flags;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&flags, bytes.data() + 12, 4);
  EXPECT_EQ(version, 2u);
  EXPECT_EQ(flags, kShardFlagPairs);
  // An unknown flag is refused, not ignored.
  std::string unknown = bytes;
  unknown[12] |= 0x02;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << unknown;
  }
  EXPECT_THAT(ShardFile::Read(path), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("flags")));

  // A file without pairs stays version 1 (older workers read it).
  const std::string plain = dir.Join("plain.shard");
  {
    TF_ASSERT_OK_AND_ASSIGN(auto w, ShardFileWriter::Create(plain, 50));
    TF_ASSERT_OK(w->AddExample(ids, mask));
    TF_ASSERT_OK(w->Finish());
  }
  {
    std::ifstream in(plain, std::ios::binary);
    std::string b(std::istreambuf_iterator<char>(in), {});
    std::memcpy(&version, b.data() + 8, 4);
  }
  EXPECT_EQ(version, 1u);
  TF_ASSERT_OK_AND_ASSIGN(ShardFile p, ShardFile::Read(plain));
  EXPECT_FALSE(p.info().pairs);
  EXPECT_EQ(p.example(0).label, -1);
}

}  // namespace
}  // namespace tunefleet::trainer
