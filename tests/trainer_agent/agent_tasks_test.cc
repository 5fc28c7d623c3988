// DPO and classification jobs through the real fleet (fleet.h): uploaded,
// sharded by the dataset service, placed by the scheduler, trained by the
// agent's worker; each reaches SUCCEEDED with its model registered, the
// method's figures in the job's metrics and (classification) its task and
// labels in the result's contract; a job asking for merged weights gets
// result/merged/.
#include "common/rpc/client.h"
#include "tests/trainer_agent/fleet.h"
#include "tunefleet/v1/models.grpc.pb.h"

namespace tunefleet {
namespace {

using ::tunefleet::testing::IsOk;
using namespace ::tunefleet::fleet_testing;  // NOLINT

class AgentTasksTest : public FleetTest {
 protected:
  rpc::CallOptions TenantCall() const {
    rpc::CallOptions o;
    o.api_key = tenant_.key;
    o.max_attempts = 1;
    return o;
  }
  absl::StatusOr<v1::JobMetrics> Metrics(const std::string& job) {
    v1::GetJobMetricsRequest req;
    req.set_job_id(job);
    return rpc::CallUnary(jobs_.get(), &v1::JobService::Stub::GetJobMetrics, req, TenantCall());
  }
  absl::StatusOr<v1::Model> GetModel(const std::string& id) {
    auto models = v1::ModelService::NewStub(scheduler_.Channel());
    v1::GetModelRequest req;
    req.set_model_id(id);
    return rpc::CallUnary(models.get(), &v1::ModelService::Stub::GetModel, req, TenantCall());
  }
  // The last value of `key` in the job's metrics points, if any.
  static std::optional<double> Last(const v1::JobMetrics& m, const std::string& key) {
    std::optional<double> out;
    for (const v1::TrainingMetrics& p : m.steps()) {
      auto it = p.extra().find(key);
      if (it != p.extra().end()) out = it->second;
    }
    return out;
  }
};

std::string PreferenceJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&out, R"({"input": {"messages": [{"role": "user", "content": "What is )", i,
                    R"( plus one?"}]}, "preferred_output": [{"role": "assistant", "content": "It is )",
                    i + 1, R"(."}], "non_preferred_output": [{"role": "assistant", "content": "No idea, )",
                    i, R"(."}]})", "\n");
  }
  return out;
}

std::string ClassificationJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    const bool spam = i % 2 == 0;
    absl::StrAppend(&out, R"({"text": ")",
                    spam ? "WIN a FREE prize now, click " : "Lunch at noon tomorrow, item ", i,
                    R"(", "label": ")", spam ? "spam" : "ham", "\"}\n");
  }
  return out;
}

TEST_F(AgentTasksTest, DpoJobSucceedsWithRewardMarginInItsMetrics) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(PreferenceJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, Upload(PreferenceJsonl(10)));
  v1::CreateJobRequest req = JobRequest(file, /*epochs=*/2, /*batch=*/4, valid);
  req.mutable_method()->mutable_dpo()->set_beta(0.1);
  req.set_write_merged(true);  // through the scheduler and the agent to the worker
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(req));
  v1::Job done = WaitState(job.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED},
                           absl::Seconds(120));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error().message() << "\n" << Logs();
  ASSERT_FALSE(done.result_model().empty());
  TF_ASSERT_OK_AND_ASSIGN(v1::Model model, GetModel(done.result_model()));
  EXPECT_EQ(model.job_id(), job.id());
  TF_ASSERT_OK_AND_ASSIGN(v1::JobMetrics metrics, Metrics(job.id()));
  ASSERT_GT(metrics.steps_size(), 0);
  // The adapter starts at zero (policy == reference, margin 0); training
  // on the preferred answers pushes the margin up.
  std::optional<double> margin = Last(metrics, "reward_margin");
  ASSERT_TRUE(margin.has_value()) << metrics.DebugString();
  EXPECT_GT(*margin, 0);
  EXPECT_TRUE(Last(metrics, "chosen_reward").has_value());
  EXPECT_TRUE(Last(metrics, "valid_reward_margin").has_value()) << metrics.DebugString();
  nlohmann::json contract = nlohmann::json::parse(ReadAll(
      dir_.Join(absl::StrCat("artifacts/jobs/", job.id(), "/result/tunefleet_contract.json"))));
  EXPECT_EQ(contract["task"], "chat");
  EXPECT_EQ(contract["merged_dir"], "merged");
  const std::string merged = dir_.Join(absl::StrCat("artifacts/jobs/", job.id(), "/result/merged"));
  EXPECT_TRUE(std::filesystem::exists(merged + "/config.json"));
  EXPECT_TRUE(std::filesystem::exists(merged + "/tokenizer.json"));
}

TEST_F(AgentTasksTest, ClassificationJobSucceedsWithItsLabelsInTheContract) {
  TF_ASSERT_OK_AND_ASSIGN(std::string file, Upload(ClassificationJsonl(12)));
  TF_ASSERT_OK_AND_ASSIGN(std::string valid, Upload(ClassificationJsonl(10)));
  v1::CreateJobRequest req = JobRequest(file, /*epochs=*/2, /*batch=*/4, valid);
  req.set_task(v1::TRAINING_TASK_CLASSIFICATION);
  TF_ASSERT_OK_AND_ASSIGN(v1::Job job, CreateJob(req));
  v1::Job done = WaitState(job.id(), {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED},
                           absl::Seconds(120));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error().message() << "\n" << Logs();
  ASSERT_FALSE(done.result_model().empty());
  TF_ASSERT_OK_AND_ASSIGN(v1::Model model, GetModel(done.result_model()));
  EXPECT_EQ(model.job_id(), job.id());
  const std::string result = dir_.Join(absl::StrCat("artifacts/jobs/", job.id(), "/result"));
  EXPECT_TRUE(std::filesystem::exists(result + "/score.safetensors"));
  nlohmann::json contract = nlohmann::json::parse(ReadAll(result + "/tunefleet_contract.json"));
  EXPECT_EQ(contract["task"], "classification");
  EXPECT_EQ(contract["num_labels"], 2);
  EXPECT_EQ(contract["label_names"].get<std::vector<std::string>>(),
            (std::vector<std::string>{"ham", "spam"}));
  TF_ASSERT_OK_AND_ASSIGN(v1::JobMetrics metrics, Metrics(job.id()));
  std::optional<double> f1 = Last(metrics, "valid_macro_f1");
  ASSERT_TRUE(f1.has_value()) << metrics.DebugString();
  EXPECT_GE(*f1, 0);
  EXPECT_LE(*f1, 1);
}

}  // namespace
}  // namespace tunefleet
