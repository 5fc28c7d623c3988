// The scheduler over gRPC on loopback with a real dataset server beside it, a
// real SQLite file, a manual clock, and a test-side trainer agent and serving
// replica that speak the internal control APIs.
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"
#include "common/errors/error_details.h"
#include "common/model/memory_estimate.h"
#include "common/model/model_config.h"
#include "common/text/phi3_tokenizer_files.h"
#include "tests/scheduler/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::tunefleet::testing::IsOk;
using ::tunefleet::testing::StatusIs;

std::string ClassificationJsonl(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&out, R"({"text":"message )", i, R"(","label":")", i % 2 ? "spam" : "ham",
                    R"("})", "\n");
  }
  return out;
}

class SchedulerServiceTest : public SchedulerFixture {
 protected:
  void Configure(SchedulerOptions& options) override {
    options.lease = absl::Seconds(10);
    options.max_retries = 2;
    options.max_active_jobs_per_tenant = max_active_jobs_;
    options.max_trained_tokens_per_tenant = max_trained_tokens_;
  }
  v1::JobState State(const std::string& id) {
    auto j = GetJob(a_.key, id);
    return j.ok() ? j->state() : v1::JOB_STATE_UNSPECIFIED;
  }
  template <typename Req>
  absl::StatusOr<v1::Job> JobCall(grpc::Status (v1::JobService::Stub::*m)(grpc::ClientContext*,
                                                                          const Req&, v1::Job*),
                                  const std::string& key, const std::string& id) {
    Req req;
    req.set_job_id(id);
    return Call(job_stub_.get(), m, key, req);
  }

  // The test-side trainer agent.
  std::string RegisterNode(const std::string& name, int slots) {
    iv1::RegisterNodeRequest req;
    req.set_node_name(name);
    req.set_slots(slots);
    req.set_agent_address("127.0.0.1:7001");
    auto resp = Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::RegisterNode,
                     internal_.key, req);
    EXPECT_THAT(resp, IsOk());
    return resp.ok() ? resp->node_id() : "";
  }
  // A GPU node: `gpus` GPUs of `memory` bytes each.
  absl::StatusOr<iv1::RegisterNodeResponse> RegisterGpuNode(const std::string& name, int gpus,
                                                            int64_t memory) {
    iv1::RegisterNodeRequest req;
    req.set_node_name(name);
    req.set_agent_address("127.0.0.1:7001");
    for (int i = 0; i < gpus; ++i) {
      iv1::GpuInfo* g = req.add_gpus();
      g->set_index(i);
      g->set_name("test GPU");
      g->set_memory_bytes(memory);
    }
    return Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::RegisterNode,
                internal_.key, req);
  }
  // The messages of tenant a's job `id`, oldest first (none: empty).
  std::vector<std::string> EventMessages(const std::string& id) {
    v1::ListJobEventsRequest req;
    req.set_job_id(id);
    auto r = Call(job_stub_.get(), &v1::JobService::Stub::ListJobEvents, a_.key, req);
    std::vector<std::string> out;
    if (r.ok())
      for (const auto& e : r->events()) out.push_back(e.message());
    return out;
  }
  absl::StatusOr<iv1::HeartbeatResponse> Heartbeat(
      const std::string& node, const std::vector<std::string>& running = {},
      iv1::AssignmentStatus::Phase phase = iv1::AssignmentStatus::PHASE_RUNNING) {
    iv1::HeartbeatRequest req;
    req.set_node_id(node);
    for (const auto& id : running) {
      auto* s = req.add_assignments();
      s->set_assignment_id(id);
      s->set_phase(phase);
    }
    return Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::Heartbeat, internal_.key,
                req);
  }
  absl::StatusOr<iv1::ReportProgressResponse> Progress(const std::string& asg, int64_t step) {
    iv1::ReportProgressRequest req;
    req.set_assignment_id(asg);
    req.mutable_metrics()->set_step(step);
    req.mutable_metrics()->set_train_loss(2.0 / step);
    req.mutable_metrics()->set_trained_tokens(step * 100);
    return Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::ReportProgress,
                internal_.key, req);
  }
  absl::StatusOr<iv1::ReportCheckpointResponse> Checkpoint(const std::string& asg, int64_t step,
                                                           const std::string& artifact) {
    iv1::ReportCheckpointRequest req;
    req.set_assignment_id(asg);
    req.set_step(step);
    req.set_artifact(artifact);
    return Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::ReportCheckpoint,
                internal_.key, req);
  }
  absl::Status Complete(const std::string& asg, bool ok, const std::string& result = "") {
    iv1::CompleteAssignmentRequest req;
    req.set_assignment_id(asg);
    req.set_succeeded(ok);
    req.set_result_artifact(result);
    req.set_trained_tokens(1234);
    return Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::CompleteAssignment,
                internal_.key, req)
        .status();
  }

  // A job running on a fresh one-slot node: (job, node, assignment).
  struct Running {
    std::string job, node, asg;
  };
  Running StartOne(const std::string& node_name = "node-a",
                   v1::TrainingTask task = v1::TRAINING_TASK_CHAT) {
    Running r;
    const bool chat = task != v1::TRAINING_TASK_CLASSIFICATION;
    auto file = chat ? UploadProcessed(a_.key, ChatJsonl(20))
                     : UploadProcessed(a_.key, ClassificationJsonl(20),
                                       v1::DATA_FORMAT_CLASSIFICATION);
    EXPECT_THAT(file, IsOk());
    v1::CreateJobRequest req = JobRequest(file->id());
    req.set_task(task);
    auto job = CreateJob(a_.key, req);
    EXPECT_THAT(job, IsOk());
    r.job = job->id();
    r.node = RegisterNode(node_name, 1);
    scheduler_->Tick(clock_.Now());
    EXPECT_EQ(State(r.job), v1::JOB_STATE_RUNNING);
    auto hb = Heartbeat(r.node);
    EXPECT_THAT(hb, IsOk());
    EXPECT_THAT(hb->assignments(), SizeIs(1));
    if (hb->assignments_size() == 1) r.asg = hb->assignments(0).assignment_id();
    return r;
  }

  std::vector<v1::JobEvent> ReadEvents(const std::string& key, const std::string& job,
                                       int64_t after, grpc::Status* status) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(20));
    v1::StreamJobEventsRequest req;
    req.set_job_id(job);
    req.set_after_sequence(after);
    auto reader = job_stub_->StreamJobEvents(&ctx, req);
    std::vector<v1::JobEvent> out;
    v1::JobEvent e;
    while (reader->Read(&e)) out.push_back(e);
    *status = reader->Finish();
    return out;
  }

  int max_active_jobs_ = 0;
  int64_t max_trained_tokens_ = 0;
};

TEST_F(SchedulerServiceTest, LifecycleFromJobToDeploymentAndDelete) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  ASSERT_EQ(file->status(), v1::FILE_STATUS_PROCESSED) << file->status_details();
  auto job = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(GetJob(a_.key, job->id())->queue_position(), 1);
  EXPECT_EQ(job->total_steps(), 100);  // 20 examples, auto: 5 epochs of batch 1
  EXPECT_DOUBLE_EQ(job->hyperparameters().learning_rate(), kLoraBaseLearningRate);

  // The file is held while the job lives.
  v1::DeleteFileRequest del_file;
  del_file.set_file_id(file->id());
  EXPECT_THAT(Call(files_stub_.get(), &v1::DatasetService::Stub::DeleteFile, a_.key, del_file),
              StatusIs(absl::StatusCode::kFailedPrecondition));

  std::string node = RegisterNode("node-a", 1);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_RUNNING);
  auto hb = Heartbeat(node);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  const iv1::Assignment a = hb->assignments(0);
  EXPECT_EQ(a.job_id(), job->id());
  EXPECT_EQ(a.tenant(), "tenant-a");
  EXPECT_EQ(a.rank(), 0);
  EXPECT_EQ(a.world_size(), 1);
  EXPECT_EQ(a.total_steps(), 100);
  EXPECT_EQ(a.master_address(), "127.0.0.1");
  EXPECT_GT(a.master_port(), 0);
  EXPECT_EQ(a.base_model(), kBase);
  EXPECT_TRUE(a.resume_checkpoint().empty());
  EXPECT_EQ(a.hyperparameters().lora_rank(), 8);

  auto p = Progress(a.assignment_id(), 10);
  ASSERT_THAT(p, IsOk());
  EXPECT_TRUE(p->keep_running());
  auto ck = Checkpoint(a.assignment_id(), 10, "jobs/" + job->id() + "/checkpoints/step-000010");
  ASSERT_THAT(ck, IsOk());
  EXPECT_THAT(ck->checkpoint_id(), HasSubstr("ckpt-"));
  auto got = GetJob(a_.key, job->id());
  EXPECT_EQ(got->completed_steps(), 10);
  ASSERT_THAT(Complete(a.assignment_id(), true, "jobs/" + job->id() + "/result"), IsOk());
  got = GetJob(a_.key, job->id());
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->state(), v1::JOB_STATE_SUCCEEDED);
  const std::string model_id = absl::StrCat("ft:", kBase, ":mine:", job->id());
  EXPECT_EQ(got->result_model(), model_id);
  EXPECT_EQ(got->trained_tokens(), 1234);
  EXPECT_TRUE(got->has_finished_at());
  // The hold is released once the job is over.
  EXPECT_TRUE(WaitFor([&] {
    return Call(files_stub_.get(), &v1::DatasetService::Stub::DeleteFile, a_.key, del_file).ok();
  }));

  // Every event replays, then the stream ends because the job is over.
  grpc::Status st;
  auto events = ReadEvents(a_.key, job->id(), 0, &st);
  EXPECT_TRUE(st.ok()) << st.error_message();
  std::vector<v1::JobState> states;
  bool metrics = false, checkpoint = false;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
    if (events[i].has_state()) states.push_back(events[i].state());
    metrics |= events[i].has_metrics();
    checkpoint |= events[i].payload_case() == v1::JobEvent::kCheckpointId;
  }
  EXPECT_THAT(states, ::testing::ElementsAre(v1::JOB_STATE_VALIDATING_FILES, v1::JOB_STATE_QUEUED,
                                             v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED));
  EXPECT_TRUE(metrics);
  EXPECT_TRUE(checkpoint);
  auto tail = ReadEvents(a_.key, job->id(), static_cast<int64_t>(events.size()) - 1, &st);
  EXPECT_THAT(tail, SizeIs(1));

  v1::ListCheckpointsRequest lc;
  lc.set_job_id(job->id());
  auto cks = Call(job_stub_.get(), &v1::JobService::Stub::ListCheckpoints, a_.key, lc);
  ASSERT_THAT(cks, IsOk());
  EXPECT_THAT(cks->checkpoints(), SizeIs(1));

  v1::GetModelRequest gm;
  gm.set_model_id(model_id);
  auto model = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm);
  ASSERT_THAT(model, IsOk());
  EXPECT_EQ(model->kind(), v1::MODEL_KIND_FINE_TUNED);
  EXPECT_EQ(model->base_model(), kBase);
  EXPECT_EQ(model->format(), "lora");
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, b_.key, gm),
              StatusIs(absl::StatusCode::kNotFound));
  v1::ListModelsRequest lm;
  auto list = Call(model_stub_.get(), &v1::ModelService::Stub::ListModels, a_.key, lm);
  ASSERT_THAT(list, IsOk());
  EXPECT_THAT(list->models(), SizeIs(2));  // the base and the fine-tuned one

  // Deploy: a replica watching sees it and reports ready.
  auto replica = RegisterReplica("replica-a", "127.0.0.1:9000");
  ASSERT_THAT(replica, IsOk());
  grpc::ClientContext watch_ctx;
  rpc::PrepareContext(&watch_ctx, internal_.key, absl::Seconds(60));
  iv1::WatchDeploymentsRequest wr;
  wr.set_replica_id(replica->replica_id());
  auto watch = serving_stub_->WatchDeployments(&watch_ctx, wr);
  iv1::DesiredDeployments desired;
  ASSERT_TRUE(watch->Read(&desired));
  EXPECT_THAT(desired.deployments(), IsEmpty());

  v1::CreateDeploymentRequest cd;
  cd.set_model(model_id);
  auto dep = Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, cd);
  ASSERT_THAT(dep, IsOk());
  EXPECT_EQ(dep->state(), v1::DEPLOYMENT_STATE_CREATING);
  ASSERT_TRUE(watch->Read(&desired));
  ASSERT_THAT(desired.deployments(), SizeIs(1));
  EXPECT_EQ(desired.deployments(0).deployment().id(), dep->id());
  EXPECT_EQ(desired.deployments(0).base_model_artifact(), kBase);
  EXPECT_EQ(desired.deployments(0).adapter_artifact(), "jobs/" + job->id() + "/result");
  EXPECT_EQ(desired.deployments(0).tenant(), "tenant-a");

  iv1::ReportReplicaStatusRequest rs;
  rs.set_replica_id(replica->replica_id());
  auto* ds = rs.add_deployments();
  ds->set_deployment_id(dep->id());
  ds->set_ready(true);
  ASSERT_THAT(Call(serving_stub_.get(), &iv1::ServingControlService::Stub::ReportReplicaStatus,
                   internal_.key, rs),
              IsOk());
  v1::GetDeploymentRequest gd;
  gd.set_deployment_id(dep->id());
  auto dep_now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  ASSERT_THAT(dep_now, IsOk());
  EXPECT_EQ(dep_now->state(), v1::DEPLOYMENT_STATE_ACTIVE);
  EXPECT_EQ(dep_now->ready_replicas(), 1);
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, b_.key, gd),
              StatusIs(absl::StatusCode::kNotFound));

  // The model cannot go while deployed; the refusal names the deployment.
  v1::DeleteModelRequest dm;
  dm.set_model_id(model_id);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::DeleteModel, a_.key, dm),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(dep->id())));
  v1::DeleteModelRequest dbase;
  dbase.set_model_id(kBase);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::DeleteModel, a_.key, dbase),
              StatusIs(absl::StatusCode::kPermissionDenied));

  v1::DeleteDeploymentRequest dd;
  dd.set_deployment_id(dep->id());
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, b_.key, dd),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, dd),
              IsOk());
  ASSERT_TRUE(watch->Read(&desired));
  EXPECT_THAT(desired.deployments(), IsEmpty());
  auto deleted = Call(model_stub_.get(), &v1::ModelService::Stub::DeleteModel, a_.key, dm);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_TRUE(deleted->deleted());
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm),
              StatusIs(absl::StatusCode::kNotFound));
  watch_ctx.TryCancel();
  iv1::DesiredDeployments ignored;
  while (watch->Read(&ignored)) {
  }
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(SchedulerServiceTest, StreamFollowsLiveEventsForSeveralWatchers) {
  Running r = StartOne();
  std::vector<std::vector<v1::JobEvent>> seen(3);
  std::vector<std::thread> watchers;
  for (int w = 0; w < 3; ++w) {
    watchers.emplace_back([&, w] {
      grpc::Status st;
      seen[w] = ReadEvents(a_.key, r.job, 0, &st);
      EXPECT_TRUE(st.ok()) << st.error_message();
    });
  }
  ASSERT_TRUE(WaitFor([&] { return scheduler_->bus().watchers(JobTopic(r.job)) == 3; }));
  for (int step = 1; step <= 5; ++step) ASSERT_THAT(Progress(r.asg, step), IsOk());
  ASSERT_THAT(Complete(r.asg, true, "jobs/x/result"), IsOk());
  for (auto& t : watchers) t.join();
  for (const auto& events : seen) {
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED);
    int metrics = 0;
    for (const auto& e : events) metrics += e.has_metrics();
    EXPECT_EQ(metrics, 5);
  }
}

TEST_F(SchedulerServiceTest, CancelRunningJobStopsItsRanks) {
  Running r = StartOne();
  auto c = JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, r.job);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLING);
  auto p = Progress(r.asg, 3);
  ASSERT_THAT(p, IsOk());
  EXPECT_FALSE(p->keep_running());
  // The desired set no longer holds it; the agent stops it and says so.
  auto hb = Heartbeat(r.node, {r.asg});
  ASSERT_THAT(hb, IsOk());
  EXPECT_THAT(hb->assignments(), IsEmpty());
  EXPECT_EQ(State(r.job), v1::JOB_STATE_CANCELLING);
  ASSERT_THAT(Heartbeat(r.node), IsOk());
  EXPECT_EQ(State(r.job), v1::JOB_STATE_CANCELLED);
  EXPECT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, r.job),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("cancelled")));
  // The slot is free again.
  EXPECT_EQ(scheduler_->Stats().used_slots, 0);
}

TEST_F(SchedulerServiceTest, PauseCheckpointsThenResumeContinuesFromIt) {
  Running r = StartOne();
  auto p = JobCall<v1::PauseJobRequest>(&v1::JobService::Stub::PauseJob, a_.key, r.job);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->state(), v1::JOB_STATE_PAUSING);
  EXPECT_THAT(JobCall<v1::ResumeJobRequest>(&v1::JobService::Stub::ResumeJob, a_.key, r.job),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("pausing")));
  auto hb = Heartbeat(r.node, {r.asg});
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_THAT(hb->checkpoint_and_stop(), Contains(r.asg));
  const std::string ckpt = "jobs/" + r.job + "/checkpoints/step-000040";
  ASSERT_THAT(Checkpoint(r.asg, 40, ckpt), IsOk());
  ASSERT_THAT(Complete(r.asg, false), IsOk());
  EXPECT_EQ(State(r.job), v1::JOB_STATE_PAUSED);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(r.job), v1::JOB_STATE_PAUSED);  // not placed while paused
  auto res = JobCall<v1::ResumeJobRequest>(&v1::JobService::Stub::ResumeJob, a_.key, r.job);
  ASSERT_THAT(res, IsOk());
  EXPECT_EQ(res->state(), v1::JOB_STATE_QUEUED);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(r.job), v1::JOB_STATE_RUNNING);
  hb = Heartbeat(r.node);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_NE(hb->assignments(0).assignment_id(), r.asg);
  EXPECT_EQ(hb->assignments(0).resume_checkpoint(), ckpt);
  EXPECT_THAT(hb->checkpoint_and_stop(), IsEmpty());
}

TEST_F(SchedulerServiceTest, LostNodeRequeuesFromLastCheckpointThenFailsPastRetryLimit) {
  Running r = StartOne("node-a");
  const std::string ckpt = "jobs/" + r.job + "/checkpoints/step-000020";
  ASSERT_THAT(Checkpoint(r.asg, 20, ckpt), IsOk());
  clock_.Advance(absl::Seconds(11));
  scheduler_->Tick(clock_.Now());
  auto job = GetJob(a_.key, r.job);
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_THAT(Heartbeat(r.node), StatusIs(absl::StatusCode::kNotFound, HasSubstr(r.node)));
  EXPECT_THAT(Complete(r.asg, true, "late"), StatusIs(absl::StatusCode::kNotFound));
  grpc::Status st;
  // Replay from 0 and stop following after a short deadline: the job is live.
  bool saw_requeue = false;
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, a_.key, absl::Milliseconds(500));
    v1::StreamJobEventsRequest req;
    req.set_job_id(r.job);
    auto reader = job_stub_->StreamJobEvents(&ctx, req);
    v1::JobEvent e;
    while (reader->Read(&e))
      saw_requeue |= e.state() == v1::JOB_STATE_QUEUED && absl::StrContains(e.message(), ckpt);
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  EXPECT_TRUE(saw_requeue);
  // A new node picks it up from the checkpoint.
  std::string node_b = RegisterNode("node-b", 1);
  scheduler_->Tick(clock_.Now());
  auto hb = Heartbeat(node_b);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).resume_checkpoint(), ckpt);
  // Lost twice more (max_retries = 2): failed, with the reason.
  for (int i = 0; i < 2; ++i) {
    clock_.Advance(absl::Seconds(11));
    scheduler_->Tick(clock_.Now());
    RegisterNode(absl::StrCat("node-c", i), 1);
    scheduler_->Tick(clock_.Now());
  }
  job = GetJob(a_.key, r.job);
  EXPECT_EQ(job->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job->error().code(), "worker_lost");
}

TEST_F(SchedulerServiceTest, TwoGangsOnThreeSlotsAndNeverFit) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  std::string n1 = RegisterNode("n1", 2);
  std::string n2 = RegisterNode("n2", 1);
  auto j1 = CreateJob(a_.key, JobRequest(file->id(), 2));
  auto j2 = CreateJob(a_.key, JobRequest(file->id(), 2));
  ASSERT_THAT(j1, IsOk());
  ASSERT_THAT(j2, IsOk());
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(j1->id()), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(State(j2->id()), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(GetJob(a_.key, j2->id())->queue_position(), 1);
  EXPECT_EQ(scheduler_->Stats().used_slots, 2);
  auto hb = Heartbeat(n1);
  ASSERT_THAT(hb->assignments(), SizeIs(2));
  EXPECT_THAT(Heartbeat(n2)->assignments(), IsEmpty());
  // Ranks 0 and 1 share the master address and port.
  EXPECT_EQ(hb->assignments(0).master_port(), hb->assignments(1).master_port());
  EXPECT_NE(hb->assignments(0).rank(), hb->assignments(1).rank());
  EXPECT_NE(hb->assignments(0).gpu_indices(0), hb->assignments(1).gpu_indices(0));
  for (const auto& a : hb->assignments())
    if (a.rank() == 1) {
      ASSERT_THAT(Complete(a.assignment_id(), true), IsOk());
    }
  for (const auto& a : hb->assignments())
    if (a.rank() == 0) {
      ASSERT_THAT(Complete(a.assignment_id(), true, "jobs/r"), IsOk());
    }
  EXPECT_EQ(State(j1->id()), v1::JOB_STATE_SUCCEEDED);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(j2->id()), v1::JOB_STATE_RUNNING);
  // More than the fleet: refused at once, naming gpus.
  EXPECT_THAT(CreateJob(a_.key, JobRequest(file->id(), 4)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gpus")));
}

// A node lost for a while (or a fleet re-registering after a restart) does
// not fail the queued jobs only it could hold: they wait up to
// unschedulable_grace (10 min) for such a node, then fail "unschedulable".
TEST_F(SchedulerServiceTest, AJobNoNodeHoldsWaitsForOneThenFailsAfterTheGrace) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  std::string big = RegisterNode("big", 2);
  std::string small = RegisterNode("small", 1);
  auto job = CreateJob(a_.key, JobRequest(file->id(), 2));
  ASSERT_THAT(job, IsOk());
  scheduler_->Tick(clock_.Now());
  ASSERT_EQ(State(job->id()), v1::JOB_STATE_RUNNING);
  auto lose = [&](const std::string& node) {
    clock_.Advance(absl::Seconds(11));
    ASSERT_THAT(Heartbeat(small), IsOk());  // the small node stays
    scheduler_->Tick(clock_.Now());
    EXPECT_THAT(Heartbeat(node), StatusIs(absl::StatusCode::kNotFound));
  };
  // The big node is lost: the job is requeued and waits, saying why and
  // until when, instead of failing on the one-slot fleet.
  lose(big);
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_QUEUED);
  EXPECT_THAT(EventMessages(job->id()),
              Contains(AllOf(HasSubstr("waiting: the job needs 2 slots and the registered "
                                       "fleet has 1"),
                             HasSubstr("unless a node that holds it registers"))));
  // Paused while it waits and resumed past the grace: the grace starts over.
  ASSERT_THAT(JobCall<v1::PauseJobRequest>(&v1::JobService::Stub::PauseJob, a_.key, job->id()),
              IsOk());
  for (int i = 0; i < 11; ++i) {
    clock_.Advance(absl::Minutes(1));
    ASSERT_THAT(Heartbeat(small), IsOk());
    scheduler_->Tick(clock_.Now());
  }
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_PAUSED);
  ASSERT_THAT(JobCall<v1::ResumeJobRequest>(&v1::JobService::Stub::ResumeJob, a_.key, job->id()),
              IsOk());
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_QUEUED);
  clock_.Advance(absl::Minutes(9));
  ASSERT_THAT(Heartbeat(small), IsOk());
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_QUEUED);
  // It comes back: the job runs on it.
  big = RegisterNode("big", 2);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_RUNNING);
  auto hb = Heartbeat(big);
  ASSERT_THAT(hb, IsOk());
  EXPECT_THAT(hb->assignments(), SizeIs(2));

  // Lost again: the grace starts over, and past it the job fails.
  lose(big);
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_QUEUED);
  for (int i = 0; i < 11; ++i) {
    clock_.Advance(absl::Minutes(1));
    ASSERT_THAT(Heartbeat(small), IsOk());
    scheduler_->Tick(clock_.Now());
  }
  auto failed = GetJob(a_.key, job->id());
  ASSERT_THAT(failed, IsOk());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->error().code(), "unschedulable");
  EXPECT_EQ(failed->error().param(), "gpus");
}

TEST_F(SchedulerServiceTest, CallerErrorsAndTenantIsolation) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest bad = JobRequest(file->id());
  bad.set_base_model("");
  bad.set_suffix("Bad Suffix!");
  bad.set_validation_split(0.9);
  EXPECT_THAT(CreateJob(a_.key, bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("base_model"), HasSubstr("suffix"),
                                        HasSubstr("validation_split"))));
  v1::CreateJobRequest unknown = JobRequest(file->id());
  unknown.set_base_model("no-such-model");
  EXPECT_THAT(CreateJob(a_.key, unknown),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model")));
  v1::CreateJobRequest hp = JobRequest(file->id());
  hp.mutable_hyperparameters()->set_epochs(0);
  EXPECT_THAT(CreateJob(a_.key, hp),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hyperparameters.epochs")));
  EXPECT_THAT(CreateJob(a_.key, JobRequest("file-doesnotexist")),
              StatusIs(absl::StatusCode::kNotFound));
  // Another tenant's file is reported like a missing one.
  EXPECT_THAT(CreateJob(b_.key, JobRequest(file->id())), StatusIs(absl::StatusCode::kNotFound));

  // validate_only answers without creating.
  v1::CreateJobRequest dry = JobRequest(file->id());
  dry.set_validate_only(true);
  auto preview = CreateJob(a_.key, dry);
  ASSERT_THAT(preview, IsOk());
  EXPECT_TRUE(preview->id().empty());
  EXPECT_EQ(preview->total_steps(), 100);

  // request_id makes creation idempotent.
  v1::CreateJobRequest once = JobRequest(file->id());
  once.set_request_id("req-1");
  auto first = CreateJob(a_.key, once);
  auto second = CreateJob(a_.key, once);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(first->id(), second->id());
  v1::ListJobsRequest lj;
  auto mine = Call(job_stub_.get(), &v1::JobService::Stub::ListJobs, a_.key, lj);
  ASSERT_THAT(mine, IsOk());
  EXPECT_THAT(mine->jobs(), SizeIs(1));
  auto theirs = Call(job_stub_.get(), &v1::JobService::Stub::ListJobs, b_.key, lj);
  ASSERT_THAT(theirs, IsOk());
  EXPECT_THAT(theirs->jobs(), IsEmpty());

  const std::string id = first->id();
  EXPECT_THAT(GetJob(b_.key, id), StatusIs(absl::StatusCode::kNotFound, HasSubstr(id)));
  EXPECT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, b_.key, id),
              StatusIs(absl::StatusCode::kNotFound));
  grpc::Status st;
  ReadEvents(b_.key, id, 0, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(JobCall<v1::ResumeJobRequest>(&v1::JobService::Stub::ResumeJob, a_.key, id),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("queued")));
  // Tenant keys cannot speak the internal APIs.
  iv1::RegisterNodeRequest rn;
  rn.set_node_name("x");
  rn.set_slots(1);
  EXPECT_THAT(Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::RegisterNode, a_.key, rn),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // Pause while queued: paused at once; cancel while paused: cancelled.
  auto paused = JobCall<v1::PauseJobRequest>(&v1::JobService::Stub::PauseJob, a_.key, id);
  ASSERT_THAT(paused, IsOk());
  EXPECT_EQ(paused->state(), v1::JOB_STATE_PAUSED);
  auto cancelled = JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, id);
  ASSERT_THAT(cancelled, IsOk());
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
}

absl::Time TimeOf(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

TEST_F(SchedulerServiceTest, ListJobEventsPagesLikeTheStreamAndMetricsComeInOneCall) {
  Running r = StartOne();
  auto created = GetJob(a_.key, r.job);
  ASSERT_THAT(created, IsOk());
  EXPECT_GE(TimeOf(created->update_time()), TimeOf(created->created_at()));
  absl::Time last_update = TimeOf(created->update_time());
  for (int step = 1; step <= 5; ++step) {
    clock_.Advance(absl::Seconds(1));
    ASSERT_THAT(Progress(r.asg, step), IsOk());
    auto job = GetJob(a_.key, r.job);
    ASSERT_THAT(job, IsOk());
    EXPECT_GT(TimeOf(job->update_time()), last_update) << "step " << step;
    last_update = TimeOf(job->update_time());
  }
  auto list = [&](const std::string& key, int32_t size, const std::string& token) {
    v1::ListJobEventsRequest req;
    req.set_job_id(r.job);
    req.set_page_size(size);
    req.set_page_token(token);
    return Call(job_stub_.get(), &v1::JobService::Stub::ListJobEvents, key, req);
  };
  // While the job runs, even the page that holds everything keeps a token to
  // poll with, and polling with it answers an empty page and the same token.
  auto running = list(a_.key, 0, "");
  ASSERT_THAT(running, IsOk());
  ASSERT_FALSE(running->events().empty());
  const std::string poll = running->next_page_token();
  EXPECT_EQ(poll, absl::StrCat(running->events().rbegin()->sequence()));
  auto idle = list(a_.key, 0, poll);
  ASSERT_THAT(idle, IsOk());
  EXPECT_THAT(idle->events(), IsEmpty());
  EXPECT_EQ(idle->next_page_token(), poll);

  clock_.Advance(absl::Seconds(1));
  ASSERT_THAT(Complete(r.asg, true, "jobs/x/result"), IsOk());
  auto done = GetJob(a_.key, r.job);
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_GT(TimeOf(done->update_time()), last_update);
  EXPECT_EQ(TimeOf(done->update_time()), TimeOf(done->finished_at()));

  grpc::Status st;
  std::vector<v1::JobEvent> streamed = ReadEvents(a_.key, r.job, 0, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::vector<v1::JobEvent> paged;
  std::string token;
  int pages = 0;
  do {
    auto page = list(a_.key, 2, token);
    ASSERT_THAT(page, IsOk());
    EXPECT_LE(page->events_size(), 2);
    for (const auto& e : page->events()) paged.push_back(e);
    token = page->next_page_token();
    ASSERT_LT(++pages, 100);
  } while (!token.empty());
  ASSERT_EQ(paged.size(), streamed.size());
  for (size_t i = 0; i < paged.size(); ++i) {
    EXPECT_EQ(paged[i].sequence(), static_cast<int64_t>(i + 1));
    EXPECT_EQ(paged[i].SerializeAsString(), streamed[i].SerializeAsString()) << "event " << i;
  }
  EXPECT_EQ(paged.back().state(), v1::JOB_STATE_SUCCEEDED);

  // The metrics, in the order reported.
  v1::GetJobMetricsRequest gm;
  gm.set_job_id(r.job);
  auto metrics = Call(job_stub_.get(), &v1::JobService::Stub::GetJobMetrics, a_.key, gm);
  ASSERT_THAT(metrics, IsOk());
  ASSERT_THAT(metrics->steps(), SizeIs(5));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(metrics->steps(i).step(), i + 1);
    EXPECT_DOUBLE_EQ(metrics->steps(i).train_loss(), 2.0 / (i + 1));
  }

  // Caller errors name the field; another tenant's job is not found.
  auto field_of = [](const absl::Status& s) {
    auto v = errors::GetDetails(s).field_violations;
    return v.size() == 1 ? v[0].field : std::string("<") + std::to_string(v.size()) + ">";
  };
  auto negative = list(a_.key, -1, "");
  EXPECT_THAT(negative, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("page_size")));
  EXPECT_EQ(field_of(negative.status()), "page_size");
  for (const std::string bad : {"abc", "-3", "999"}) {
    auto page = list(a_.key, 0, bad);
    EXPECT_THAT(page, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(bad)));
    EXPECT_EQ(field_of(page.status()), "page_token") << bad;
  }
  EXPECT_THAT(list(b_.key, 0, ""), StatusIs(absl::StatusCode::kNotFound, HasSubstr(r.job)));
  EXPECT_THAT(Call(job_stub_.get(), &v1::JobService::Stub::GetJobMetrics, b_.key, gm),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(r.job)));
  gm.set_job_id("ftjob-nope");
  EXPECT_THAT(Call(job_stub_.get(), &v1::JobService::Stub::GetJobMetrics, a_.key, gm),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("ftjob-nope")));

  // update_time is kept with the job across a restart.
  StopScheduler();
  StartScheduler();
  auto reopened = GetJob(a_.key, r.job);
  ASSERT_THAT(reopened, IsOk());
  EXPECT_EQ(TimeOf(reopened->update_time()), TimeOf(done->update_time()));
  auto again = list(a_.key, 1000, "");
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->events_size(), static_cast<int>(streamed.size()));
  EXPECT_TRUE(again->next_page_token().empty());
}

TEST_F(SchedulerServiceTest, RestartKeepsJobsEventsCheckpointsModelsAndAssignments) {
  Running r = StartOne();
  ASSERT_THAT(Checkpoint(r.asg, 30, "jobs/x/checkpoints/step-30"), IsOk());
  ASSERT_THAT(Progress(r.asg, 31), IsOk());
  grpc::Status st;
  StopScheduler();
  StartScheduler();
  auto job = GetJob(a_.key, r.job);
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job->completed_steps(), 31);
  // The agent that is still there keeps its attempt.
  auto hb = Heartbeat(r.node, {r.asg});
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).assignment_id(), r.asg);
  ASSERT_THAT(Complete(r.asg, true, "jobs/x/result"), IsOk());
  auto events = ReadEvents(a_.key, r.job, 0, &st);
  EXPECT_TRUE(st.ok());
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED);
  v1::ListCheckpointsRequest lc;
  lc.set_job_id(r.job);
  EXPECT_THAT(Call(job_stub_.get(), &v1::JobService::Stub::ListCheckpoints, a_.key, lc)->checkpoints(),
              SizeIs(1));
  StopScheduler();
  StartScheduler();
  v1::GetModelRequest gm;
  gm.set_model_id(absl::StrCat("ft:", kBase, ":mine:", r.job));
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm), IsOk());
}

TEST_F(SchedulerServiceTest, HigherPriorityPreemptsWhichResumesFromItsCheckpoint) {
  Running low = StartOne();
  const std::string ckpt = "jobs/" + low.job + "/checkpoints/step-000050";
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_priority(10);
  auto high = CreateJob(a_.key, req);
  ASSERT_THAT(high, IsOk());
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(high->id()), v1::JOB_STATE_QUEUED);
  // The low-priority job is asked to checkpoint and stop.
  auto hb = Heartbeat(low.node, {low.asg});
  ASSERT_THAT(hb, IsOk());
  EXPECT_THAT(hb->checkpoint_and_stop(), Contains(low.asg));
  scheduler_->Tick(clock_.Now());  // asking again changes nothing
  ASSERT_THAT(Checkpoint(low.asg, 50, ckpt), IsOk());
  ASSERT_THAT(Complete(low.asg, false), IsOk());
  EXPECT_EQ(State(low.job), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(scheduler_->Stats().preemptions, 1);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(high->id()), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(State(low.job), v1::JOB_STATE_QUEUED);
  hb = Heartbeat(low.node);
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).job_id(), high->id());
  EXPECT_THAT(hb->checkpoint_and_stop(), IsEmpty());  // nothing lower to preempt
  ASSERT_THAT(Complete(hb->assignments(0).assignment_id(), true, "jobs/h/result"), IsOk());
  scheduler_->Tick(clock_.Now());
  hb = Heartbeat(low.node);
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).job_id(), low.job);
  EXPECT_EQ(hb->assignments(0).resume_checkpoint(), ckpt);
  ASSERT_THAT(Complete(hb->assignments(0).assignment_id(), true, "jobs/l/result"), IsOk());
  EXPECT_EQ(State(low.job), v1::JOB_STATE_SUCCEEDED);
}

// Cancel, pause and resume over every state a job can be in: the state table
// seen through the API, with the precise code and the blocking state named.
TEST_F(SchedulerServiceTest, WrongStateTableOverTheApi) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  std::string node = RegisterNode("big", 64);
  // A job driven to `state`; returns its id.
  auto make = [&](v1::JobState state) -> std::string {
    auto job = CreateJob(a_.key, JobRequest(file->id()));
    EXPECT_THAT(job, IsOk());
    const std::string id = job->id();
    if (state == v1::JOB_STATE_QUEUED) {
      return id;  // no Tick: stays queued
    }
    if (state == v1::JOB_STATE_CANCELLED) {
      EXPECT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, id), IsOk());
      return id;
    }
    scheduler_->Tick(clock_.Now());
    auto hb = Heartbeat(node);
    std::string asg;
    for (const auto& a : hb->assignments())
      if (a.job_id() == id) asg = a.assignment_id();
    EXPECT_FALSE(asg.empty());
    switch (state) {
      case v1::JOB_STATE_PAUSING:
      case v1::JOB_STATE_PAUSED:
        EXPECT_THAT(JobCall<v1::PauseJobRequest>(&v1::JobService::Stub::PauseJob, a_.key, id), IsOk());
        if (state == v1::JOB_STATE_PAUSED) {
          EXPECT_THAT(Complete(asg, false), IsOk());
        }
        break;
      case v1::JOB_STATE_CANCELLING:
        EXPECT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, id), IsOk());
        break;
      case v1::JOB_STATE_SUCCEEDED:
        EXPECT_THAT(Complete(asg, true, "jobs/r"), IsOk());
        break;
      case v1::JOB_STATE_FAILED:
        EXPECT_THAT(Complete(asg, false), IsOk());
        break;
      default:
        break;
    }
    EXPECT_EQ(State(id), state);
    return id;
  };
  using S = v1::JobState;
  const v1::JobState U = v1::JOB_STATE_UNSPECIFIED;  // refused
  struct Row {
    S from;
    S after_cancel, after_pause, after_resume;
  };
  const Row rows[] = {
      {v1::JOB_STATE_QUEUED, v1::JOB_STATE_CANCELLED, v1::JOB_STATE_PAUSED, U},
      {v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING, v1::JOB_STATE_PAUSING, U},
      {v1::JOB_STATE_PAUSING, v1::JOB_STATE_CANCELLING, U, U},
      {v1::JOB_STATE_PAUSED, v1::JOB_STATE_CANCELLED, U, v1::JOB_STATE_QUEUED},
      {v1::JOB_STATE_CANCELLING, U, U, U},
      {v1::JOB_STATE_SUCCEEDED, U, U, U},
      {v1::JOB_STATE_FAILED, U, U, U},
      {v1::JOB_STATE_CANCELLED, U, U, U},
  };
  for (const Row& r : rows) {
    const std::string name(StateName(r.from));
    SCOPED_TRACE(name);
    const std::pair<int, S> ops[] = {{0, r.after_cancel}, {1, r.after_pause}, {2, r.after_resume}};
    for (const auto& [op, want] : ops) {
      std::string id = make(r.from);
      absl::StatusOr<v1::Job> got =
          op == 0   ? JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, id)
          : op == 1 ? JobCall<v1::PauseJobRequest>(&v1::JobService::Stub::PauseJob, a_.key, id)
                    : JobCall<v1::ResumeJobRequest>(&v1::JobService::Stub::ResumeJob, a_.key, id);
      if (want == U) {
        EXPECT_THAT(got, StatusIs(absl::StatusCode::kFailedPrecondition,
                                  ::testing::AllOf(HasSubstr(id), HasSubstr("is " + name))))
            << "op " << op;
      } else {
        ASSERT_THAT(got, IsOk()) << "op " << op;
        EXPECT_EQ(got->state(), want) << "op " << op;
      }
    }
  }
}

TEST_F(SchedulerServiceTest, NewHyperparametersMethodAndMemoryEstimateEndToEnd) {
  // Declared chat (File.format is the uploader's declaration).
  auto file = UploadProcessed(a_.key, ChatJsonl(20), v1::DATA_FORMAT_CHAT);
  ASSERT_THAT(file, IsOk());
  // Each bad new field is named by its path, all in one answer.
  v1::CreateJobRequest bad = JobRequest(file->id());
  auto* bh = bad.mutable_hyperparameters();
  bh->set_weight_decay(2);
  bh->set_max_steps(-3);
  bh->set_keep_checkpoints(0);
  bh->set_early_stopping_patience(-1);
  bh->set_micro_batch_size(0);
  bh->set_lr_scheduler(static_cast<v1::LrScheduler>(7));
  EXPECT_THAT(CreateJob(a_.key, bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("hyperparameters.weight_decay"),
                                        HasSubstr("hyperparameters.max_steps"),
                                        HasSubstr("hyperparameters.keep_checkpoints"),
                                        HasSubstr("hyperparameters.early_stopping_patience"),
                                        HasSubstr("hyperparameters.micro_batch_size"),
                                        HasSubstr("hyperparameters.lr_scheduler"))));
  // learning_rate and learning_rate_multiplier together: both named.
  v1::CreateJobRequest both = JobRequest(file->id());
  both.mutable_hyperparameters()->set_learning_rate(1e-4);
  both.mutable_hyperparameters()->set_learning_rate_multiplier(2);
  EXPECT_THAT(CreateJob(a_.key, both),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("hyperparameters.learning_rate:"),
                                        HasSubstr("hyperparameters.learning_rate_multiplier:"))));
  // DPO on a chat file is refused naming the file's format and the need.
  v1::CreateJobRequest dpo = JobRequest(file->id());
  dpo.mutable_method()->mutable_dpo()->set_beta(0.2);
  EXPECT_THAT(CreateJob(a_.key, dpo),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("training_file"), HasSubstr(file->id()),
                                        HasSubstr("DATA_FORMAT_CHAT"), HasSubstr("method dpo"),
                                        HasSubstr("DATA_FORMAT_PREFERENCE"))));
  dpo.mutable_method()->mutable_dpo()->set_beta(11);
  EXPECT_THAT(CreateJob(a_.key, dpo),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("method.dpo.beta")));

  // validate_only: the resolved values and the memory estimate, nothing created.
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_adapter(v1::ADAPTER_TYPE_FULL);
  req.set_write_merged(true);
  auto* h = req.mutable_hyperparameters();
  h->set_learning_rate(3e-5);
  h->set_max_steps(40);
  h->set_gradient_checkpointing(true);
  h->set_keep_checkpoints(3);
  h->set_batch_size(2);
  h->set_micro_batch_size(1);
  req.set_validate_only(true);
  auto preview = CreateJob(a_.key, req);
  ASSERT_THAT(preview, IsOk());
  EXPECT_TRUE(preview->id().empty());
  EXPECT_EQ(preview->total_steps(), 40);  // 5 epochs x 10 steps = 50, capped at 40
  EXPECT_TRUE(preview->method().has_supervised());
  EXPECT_DOUBLE_EQ(preview->hyperparameters().learning_rate(), 3e-5);
  EXPECT_DOUBLE_EQ(preview->hyperparameters().learning_rate_multiplier(), 3.0);
  EXPECT_DOUBLE_EQ(preview->hyperparameters().weight_decay(), kFullWeightDecay);
  const v1::MemoryEstimate& mem = preview->memory_estimate();
  EXPECT_GT(mem.weights_bytes(), 0);
  EXPECT_GT(mem.activations_bytes(), 0);
  // Full fine-tuning: gradients as large as the fp32 weights, AdamW twice that.
  EXPECT_EQ(mem.gradients_bytes(), mem.weights_bytes());
  EXPECT_EQ(mem.optimizer_state_bytes(), 2 * mem.weights_bytes());
  EXPECT_EQ(mem.total_bytes(), mem.weights_bytes() + mem.gradients_bytes() +
                                   mem.optimizer_state_bytes() + mem.activations_bytes());
  v1::ListJobsRequest lj;
  auto none = Call(job_stub_.get(), &v1::JobService::Stub::ListJobs, a_.key, lj);
  ASSERT_THAT(none, IsOk());
  EXPECT_THAT(none->jobs(), IsEmpty());

  // Created: GetJob reports every resolved value.
  req.set_validate_only(false);
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, IsOk());
  auto got = GetJob(a_.key, job->id());
  ASSERT_THAT(got, IsOk());
  const v1::Hyperparameters& g = got->hyperparameters();
  EXPECT_EQ(got->adapter(), v1::ADAPTER_TYPE_FULL);
  EXPECT_TRUE(got->write_merged());
  EXPECT_TRUE(got->method().has_supervised());
  EXPECT_EQ(got->memory_estimate().total_bytes(), mem.total_bytes());
  EXPECT_EQ(g.lr_scheduler(), v1::LR_SCHEDULER_COSINE);
  EXPECT_TRUE(g.has_packing() && g.packing());
  EXPECT_TRUE(g.gradient_checkpointing());
  EXPECT_EQ(g.keep_checkpoints(), 3);
  EXPECT_TRUE(g.has_early_stopping_patience());
  EXPECT_EQ(g.max_steps(), 40);
  EXPECT_EQ(g.micro_batch_size(), 1);
  EXPECT_EQ(g.checkpoint_interval_steps(), 4);

  // The assignment carries the method, write_merged and the hyperparameters.
  std::string node = RegisterNode("node-a", 1);
  scheduler_->Tick(clock_.Now());
  auto hb = Heartbeat(node);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  const iv1::Assignment& a = hb->assignments(0);
  EXPECT_TRUE(a.method().has_supervised());
  EXPECT_TRUE(a.write_merged());
  EXPECT_EQ(a.adapter(), v1::ADAPTER_TYPE_FULL);
  EXPECT_EQ(a.total_steps(), 40);
  EXPECT_EQ(a.hyperparameters().SerializeAsString(), g.SerializeAsString());
}

TEST_F(SchedulerServiceTest, BaseModelsSayWhatTheySupport) {
  v1::GetModelRequest req;
  req.set_model_id(kBase);
  auto m = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, req);
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->format(), "hf");
  EXPECT_EQ(m->format_type(), v1::MODEL_FORMAT_HF);
  const v1::ModelCapabilities& c = m->capabilities();
  EXPECT_THAT(c.methods(), Contains("dpo"));
  EXPECT_THAT(c.adapters(), Contains(v1::ADAPTER_TYPE_FULL));
  EXPECT_EQ(c.min_gpus(), 1);
  EXPECT_EQ(c.max_sequence_length(), 512);
  bool found = false;
  for (const auto& b : c.hyperparameters()) {
    if (b.name() != "max_sequence_length") continue;
    found = true;
    EXPECT_EQ(b.max(), 512);
    EXPECT_EQ(b.min(), 16);
  }
  EXPECT_TRUE(found);
}

// Base models' config.json is read by the model library's parser: a folder
// it rejects is not offered (nor does it stop the others), and asking for it
// says why.
TEST_F(SchedulerServiceTest, BaseModelsTheModelLibraryRejectsAreNotOffered) {
  const std::map<std::string, std::pair<std::string, std::string>> broken = {
      {"no-heads",
       {R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
        R"("intermediate_size":128,"vocab_size":300})",
        "field 'num_attention_heads' is missing"}},
      {"gpt2-base",
       {R"({"model_type":"gpt2","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,)"
        R"("intermediate_size":128,"vocab_size":300})",
        "'gpt2', not one of phi3, llama, mistral"}},
      {"not-json", {"{", "not valid JSON"}},
  };
  for (const auto& [id, config] : broken) WriteBaseModel(id, config.first);
  v1::ListModelsRequest list;
  list.set_kind(v1::MODEL_KIND_BASE);
  auto listed = Call(model_stub_.get(), &v1::ModelService::Stub::ListModels, a_.key, list);
  ASSERT_THAT(listed, IsOk());
  std::vector<std::string> ids;
  for (const auto& m : listed->models()) ids.push_back(m.id());
  EXPECT_THAT(ids, ElementsAre(kBase));
  for (const auto& [id, config] : broken) {
    v1::GetModelRequest get;
    get.set_model_id(id);
    EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, get),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         ::testing::AllOf(HasSubstr(id), HasSubstr("not usable"),
                                          HasSubstr(config.second))))
        << id;
    v1::CreateDeploymentRequest cd;
    cd.set_model(id);
    EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, cd),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         ::testing::AllOf(HasSubstr("model: model '" + id + "' is not usable"),
                                          HasSubstr(config.second))))
        << id;
  }
  // Mended: offered on the next look.
  WriteBaseModel("no-heads",
                 R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,)"
                 R"("num_attention_heads":4,"intermediate_size":128,"vocab_size":300})");
  v1::GetModelRequest get;
  get.set_model_id("no-heads");
  auto mended = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, get);
  ASSERT_THAT(mended, IsOk());
  EXPECT_EQ(mended->family(), "llama");
  EXPECT_EQ(mended->max_sequence_length(), 2048);  // the library's llama default
}

TEST_F(SchedulerServiceTest, ValidationSplitMakesAndHoldsBothParts) {
  auto file = UploadProcessed(a_.key, ChatJsonl(40));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_validation_split(0.25);
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, IsOk());
  EXPECT_NE(job->training_file(), file->id());
  ASSERT_FALSE(job->validation_file().empty());
  EXPECT_GT(job->hyperparameters().eval_interval_steps(), 0);
  for (const std::string& part : {job->training_file(), job->validation_file()}) {
    v1::DeleteFileRequest del;
    del.set_file_id(part);
    EXPECT_THAT(Call(files_stub_.get(), &v1::DatasetService::Stub::DeleteFile, a_.key, del),
                StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(job->id())));
  }
}

TEST_F(SchedulerServiceTest, TenantQuotaRefusesAtAdmission) {
  StopScheduler();
  max_active_jobs_ = 1;
  StartScheduler();
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  auto first = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(CreateJob(a_.key, JobRequest(file->id())),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_active_jobs_per_tenant")));
  // Another tenant has its own quota.
  auto theirs = UploadProcessed(b_.key, ChatJsonl(20));
  ASSERT_THAT(theirs, IsOk());
  EXPECT_THAT(CreateJob(b_.key, JobRequest(theirs->id())), IsOk());
  ASSERT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, first->id()),
              IsOk());
  EXPECT_THAT(CreateJob(a_.key, JobRequest(file->id())), IsOk());
}

// The trained-token quota: unfinished jobs count their estimate, succeeded
// ones what they trained inside the rolling period, cancelled ones nothing.
TEST_F(SchedulerServiceTest, TrainedTokenQuotaPerTenantAndPeriod) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  // Uncounted (no tokenizer at upload): bytes / 4 per epoch.
  ASSERT_EQ(file->validation().statistics().trained_tokens(), 0);
  const int64_t per_epoch = file->bytes() / 4;
  ASSERT_GT(per_epoch, 0);
  // 20 examples, auto: 100 steps of batch 1 = 5 epochs: 5 x per_epoch each.
  const int64_t each = 5 * per_epoch;
  StopScheduler();
  max_trained_tokens_ = 12 * per_epoch;
  StartScheduler();
  auto first = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(first, IsOk());
  ASSERT_EQ(first->total_steps(), 100);
  auto second = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(second, IsOk());
  auto refused = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted,
                                HasSubstr("max_trained_tokens_per_tenant")));
  errors::Details d = errors::GetDetails(refused.status());
  ASSERT_EQ(d.quota_violations.size(), 1u);
  EXPECT_EQ(d.quota_violations[0].subject, "tenant:tenant-a/max_trained_tokens_per_tenant");
  EXPECT_THAT(d.quota_violations[0].description,
              HasSubstr(absl::StrCat(2 * each, " used + ", each, " estimated > ", 12 * per_epoch)));
  EXPECT_EQ(d.reason, "QUOTA_EXCEEDED");
  // Another tenant has its own.
  auto theirs = UploadProcessed(b_.key, ChatJsonl(20));
  ASSERT_THAT(theirs, IsOk());
  EXPECT_THAT(CreateJob(b_.key, JobRequest(theirs->id())), IsOk());
  // A cancelled job gives its share back.
  ASSERT_THAT(JobCall<v1::CancelJobRequest>(&v1::JobService::Stub::CancelJob, a_.key, second->id()),
              IsOk());
  auto third = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(third, IsOk());

  // The first job succeeds having trained 7 x per_epoch: 7 + 5 (third) used.
  std::string node = RegisterNode("node-a", 1);
  scheduler_->Tick(clock_.Now());
  auto hb = Heartbeat(node);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  ASSERT_EQ(hb->assignments(0).job_id(), first->id());
  iv1::CompleteAssignmentRequest done;
  done.set_assignment_id(hb->assignments(0).assignment_id());
  done.set_succeeded(true);
  done.set_result_artifact("jobs/" + first->id() + "/result");
  done.set_trained_tokens(7 * per_epoch);
  ASSERT_THAT(Call(trainer_stub_.get(), &iv1::TrainerControlService::Stub::CompleteAssignment,
                   internal_.key, done),
              IsOk());
  ASSERT_EQ(State(first->id()), v1::JOB_STATE_SUCCEEDED);
  EXPECT_THAT(CreateJob(a_.key, JobRequest(file->id())),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // 31 days later the first job's tokens have left the rolling 30 days.
  clock_.Advance(absl::Hours(24 * 31));
  EXPECT_THAT(CreateJob(a_.key, JobRequest(file->id())), IsOk());
}

// ---- UpdateDeployment and GetModelContent ---------------------------------

struct TarEntry {
  std::string name;
  char type = 0;
  std::string data;
};

// A small ustar reader: every header's checksum checked, names joined from
// prefix and name, sizes in octal. Stops at the first zero block.
std::vector<TarEntry> ReadTar(const std::string& tar, std::string* error) {
  std::vector<TarEntry> out;
  size_t at = 0;
  auto field = [&](size_t off, size_t len) {
    std::string f = tar.substr(at + off, len);
    return f.substr(0, f.find('\0'));
  };
  while (at + 512 <= tar.size()) {
    if (tar.compare(at, 512, std::string(512, '\0')) == 0) return out;
    unsigned sum = 0;
    for (size_t i = 0; i < 512; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(tar[at + i]);
    }
    if (std::stoul(field(148, 8), nullptr, 8) != sum) {
      *error = absl::StrCat("bad checksum at ", at);
      return out;
    }
    if (field(257, 6) != "ustar") {
      *error = absl::StrCat("no ustar magic at ", at);
      return out;
    }
    TarEntry e;
    std::string prefix = field(345, 155);
    e.name = prefix.empty() ? field(0, 100) : prefix + "/" + field(0, 100);
    e.type = tar[at + 156];
    size_t size = std::stoul(field(124, 12), nullptr, 8);
    e.data = tar.substr(at + 512, size);
    at += 512 + (size + 511) / 512 * 512;
    out.push_back(std::move(e));
  }
  *error = "no end-of-archive blocks";
  return out;
}

TEST_F(SchedulerServiceTest, LabelsFollowTheJobToItsModelAndFilterEveryList) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  (*req.mutable_labels())["team"] = "nlp";
  (*req.mutable_labels())["ticket"] = "ml-42";
  req.set_description("support bot, round 2");
  auto nlp = CreateJob(a_.key, req);
  ASSERT_THAT(nlp, IsOk());
  EXPECT_EQ(nlp->labels().at("team"), "nlp");
  EXPECT_EQ(nlp->description(), "support bot, round 2");
  req.clear_labels();
  (*req.mutable_labels())["team"] = "vision";
  auto vision = CreateJob(a_.key, req);
  ASSERT_THAT(vision, IsOk());

  // Bad labels and descriptions name the entry; nothing is created.
  v1::CreateJobRequest bad = JobRequest(file->id());
  (*bad.mutable_labels())["Team"] = "nlp";
  bad.set_description(std::string(2000, 'x'));
  auto refused = CreateJob(a_.key, bad);
  ASSERT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument));
  errors::Details d = errors::GetDetails(refused.status());
  ASSERT_EQ(d.field_violations.size(), 2u);
  EXPECT_EQ(d.field_violations[0].field, "labels[\"Team\"]");
  EXPECT_EQ(d.field_violations[1].field, "description");

  auto list_jobs = [&](std::map<std::string, std::string> labels) {
    v1::ListJobsRequest lr;
    lr.mutable_labels()->insert(labels.begin(), labels.end());
    std::vector<std::string> ids;
    auto resp = Call(job_stub_.get(), &v1::JobService::Stub::ListJobs, a_.key, lr);
    if (!resp.ok()) ids.push_back(std::string(resp.status().message()));
    else for (const auto& j : resp->jobs()) ids.push_back(j.id());
    return ids;
  };
  EXPECT_THAT(list_jobs({{"team", "nlp"}}), ElementsAre(nlp->id()));
  EXPECT_THAT(list_jobs({{"team", "nlp"}, {"ticket", "ml-43"}}), IsEmpty());
  EXPECT_THAT(list_jobs({}), SizeIs(2));
  EXPECT_THAT(list_jobs({{"", "x"}}), ElementsAre(HasSubstr("labels[\"\"]")));

  // The job runs to the end: its model carries the labels.
  std::string node = RegisterNode("node-a", 2);
  scheduler_->Tick(clock_.Now());
  auto hb = Heartbeat(node);
  ASSERT_THAT(hb, IsOk());
  std::string asg;
  for (const auto& a : hb->assignments())
    if (a.job_id() == nlp->id()) asg = a.assignment_id();
  ASSERT_FALSE(asg.empty());
  ASSERT_THAT(Complete(asg, true, "jobs/" + nlp->id() + "/result"), IsOk());
  const std::string model_id = absl::StrCat("ft:", kBase, ":mine:", nlp->id());
  v1::GetModelRequest gm;
  gm.set_model_id(model_id);
  auto model = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm);
  ASSERT_THAT(model, IsOk());
  EXPECT_EQ(model->labels().at("ticket"), "ml-42");
  EXPECT_EQ(model->description(), "support bot, round 2");
  v1::ListModelsRequest lm;
  (*lm.mutable_labels())["team"] = "nlp";
  auto models = Call(model_stub_.get(), &v1::ModelService::Stub::ListModels, a_.key, lm);
  ASSERT_THAT(models, IsOk());
  ASSERT_EQ(models->models_size(), 1);  // base models carry no labels
  EXPECT_EQ(models->models(0).id(), model_id);

  // Deployments: labels kept, listed by label, survive a restart.
  v1::CreateDeploymentRequest dr;
  dr.set_model(model_id);
  (*dr.mutable_labels())["env"] = "prod";
  dr.set_description("the support endpoint");
  auto dep = Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, dr);
  ASSERT_THAT(dep, IsOk());
  dr.clear_labels();
  (*dr.mutable_labels())["env"] = "dev";
  ASSERT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, dr),
              IsOk());
  StopScheduler();
  StartScheduler();
  v1::ListDeploymentsRequest ld;
  (*ld.mutable_labels())["env"] = "prod";
  auto deps = Call(dep_stub_.get(), &v1::DeploymentService::Stub::ListDeployments, a_.key, ld);
  ASSERT_THAT(deps, IsOk());
  ASSERT_EQ(deps->deployments_size(), 1);
  EXPECT_EQ(deps->deployments(0).id(), dep->id());
  EXPECT_EQ(deps->deployments(0).description(), "the support endpoint");
  EXPECT_EQ(GetJob(a_.key, nlp->id())->labels().at("team"), "nlp");
}

TEST_F(SchedulerServiceTest, DpoOnAChatFileUploadedWithoutAFormatIsRefused) {
  // The dataset service records the format it found, so an undeclared file
  // is checked like a declared one.
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  EXPECT_EQ(file->format(), v1::DATA_FORMAT_CHAT);
  v1::CreateJobRequest req = JobRequest(file->id());
  req.mutable_method()->mutable_dpo();
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("DATA_FORMAT_PREFERENCE")));
  errors::Details d = errors::GetDetails(job.status());
  ASSERT_EQ(d.field_violations.size(), 1u);
  EXPECT_EQ(d.field_violations[0].field, "training_file");
  EXPECT_THAT(d.field_violations[0].description, HasSubstr("DATA_FORMAT_CHAT"));
}

class ModelContentTest : public SchedulerServiceTest {
 public:
  std::string Model(const std::map<std::string, std::string>& files,
                    v1::TrainingTask task = v1::TRAINING_TASK_CHAT,
                    const std::string& node_name = "node-a") {
    Running r = StartOne(node_name, task);
    const std::string artifact = "jobs/" + r.job + "/result";
    for (const auto& [name, content] : files) {
      std::filesystem::path p = std::filesystem::path(dir_.Join("artifacts")) / artifact / name;
      std::filesystem::create_directories(p.parent_path());
      std::ofstream(p, std::ios::binary) << content;
    }
    EXPECT_THAT(Complete(r.asg, true, artifact), IsOk());
    return absl::StrCat("ft:", kBase, ":mine:", r.job);
  }

  // Every chunk of GetModelContent.
  std::vector<v1::ModelContentChunk> Download(const std::string& key, const std::string& model,
                                              grpc::Status* status) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, key, absl::Seconds(30));
    v1::GetModelContentRequest req;
    req.set_model_id(model);
    auto reader = model_stub_->GetModelContent(&ctx, req);
    std::vector<v1::ModelContentChunk> chunks;
    v1::ModelContentChunk c;
    while (reader->Read(&c)) chunks.push_back(c);
    *status = reader->Finish();
    return chunks;
  }

  absl::StatusOr<v1::Deployment> Update(const std::string& key, const v1::Deployment& d,
                                        std::vector<std::string> paths) {
    v1::UpdateDeploymentRequest req;
    *req.mutable_deployment() = d;
    for (const auto& p : paths) req.mutable_update_mask()->add_paths(p);
    return Call(dep_stub_.get(), &v1::DeploymentService::Stub::UpdateDeployment, key, req);
  }
};

TEST_F(ModelContentTest, StreamsThePeftDirectoryAsAUstarArchiveWithItsSha256) {
  // Big enough for several 1 MiB chunks; a nested path over 100 bytes.
  std::string weights;
  for (int i = 0; weights.size() < 2500000; ++i) absl::StrAppend(&weights, i, ",");
  const std::string long_name =
      "nested/" + std::string(60, 'd') + "/" + std::string(70, 'f') + ".json";
  std::map<std::string, std::string> files = {
      {"adapter_config.json", R"({"r": 8, "lora_alpha": 16})"},
      {"adapter_model.safetensors", weights},
      {"tunefleet_contract.json", R"({"base_model": "tiny-base"})"},
      {"empty.txt", ""},
      {long_name, "{}"}};
  const std::string model = Model(files);

  grpc::Status st;
  auto chunks = Download(a_.key, model, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_GE(chunks.size(), 3u);
  std::string tar;
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].offset(), static_cast<int64_t>(tar.size())) << i;
    EXPECT_EQ(chunks[i].sha256().empty(), i + 1 < chunks.size()) << "sha256 on the last chunk only";
    EXPECT_EQ(chunks[i].total_bytes(), chunks[0].total_bytes());
    tar += chunks[i].data();
  }
  EXPECT_EQ(chunks[0].filename(), absl::StrCat("ft_", kBase, "_mine_", model.substr(model.rfind(':') + 1), ".tar"));
  EXPECT_EQ(static_cast<int64_t>(tar.size()), chunks[0].total_bytes());
  EXPECT_EQ(tar.size() % 512, 0u);
  EXPECT_EQ(chunks.back().sha256(), Sha256Hex(tar));

  std::string error;
  std::vector<TarEntry> entries = ReadTar(tar, &error);
  ASSERT_TRUE(error.empty()) << error;
  std::string root = model;
  for (char& c : root) c = c == ':' ? '_' : c;
  std::map<std::string, std::string> got;
  std::set<std::string> dirs;
  for (const auto& e : entries) {
    ASSERT_TRUE(absl::StartsWith(e.name, root + "/")) << e.name;
    if (e.type == '5') {
      dirs.insert(e.name.substr(root.size() + 1));
    } else {
      EXPECT_EQ(e.type, '0') << e.name;
      got[e.name.substr(root.size() + 1)] = e.data;
    }
  }
  EXPECT_EQ(got, files);
  EXPECT_THAT(dirs, ::testing::ElementsAre("", "nested/", "nested/" + std::string(60, 'd') + "/"));

  // The same model, the same archive.
  auto again = Download(a_.key, model, &st);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(again.back().sha256(), chunks.back().sha256());
}

TEST_F(ModelContentTest, CallerErrorsNameTheModel) {
  const std::string model = Model({{"adapter_config.json", "{}"}});
  grpc::Status st;
  Download(b_.key, model, &st);  // another tenant's model
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr(model));
  Download(a_.key, "ft:tiny-base:x:ftjob-nope", &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("ft:tiny-base:x:ftjob-nope"));
  Download(a_.key, kBase, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("is a base model"));
  Download(a_.key, "no-such-base", &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("no-such-base"));
  Download("tf-not-a-key", model, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The model's files are gone from the store: a server-side loss naming
  // the model, not a crash.
  std::filesystem::remove_all(dir_.Join("artifacts"));
  Download(a_.key, model, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(st.error_message(), HasSubstr(model));
}

TEST_F(ModelContentTest, UpdateDeploymentKeepsTheIdAndReplicasReconcileToIt) {
  const std::string first = Model({{"adapter_config.json", "{}"}});
  const std::string second = Model({{"adapter_config.json", "{}"}});
  auto replica = RegisterReplica();
  ASSERT_THAT(replica, IsOk());
  grpc::ClientContext watch_ctx;
  rpc::PrepareContext(&watch_ctx, internal_.key, absl::Seconds(60));
  iv1::WatchDeploymentsRequest wr;
  wr.set_replica_id(replica->replica_id());
  auto watch = serving_stub_->WatchDeployments(&watch_ctx, wr);
  iv1::DesiredDeployments desired;
  ASSERT_TRUE(watch->Read(&desired));

  v1::CreateDeploymentRequest cd;
  cd.set_model(first);
  auto dep = Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, cd);
  ASSERT_THAT(dep, IsOk());
  ASSERT_TRUE(watch->Read(&desired));
  auto report_ready = [&] {
    iv1::ReportReplicaStatusRequest rs;
    rs.set_replica_id(replica->replica_id());
    auto* ds = rs.add_deployments();
    ds->set_deployment_id(dep->id());
    ds->set_ready(true);
    return Call(serving_stub_.get(), &iv1::ServingControlService::Stub::ReportReplicaStatus,
                internal_.key, rs)
        .status();
  };
  ASSERT_THAT(report_ready(), IsOk());

  // A new model: same id, back to CREATING, the replica is told.
  v1::Deployment patch;
  patch.set_id(dep->id());
  patch.set_model(second);
  patch.set_replicas(40);  // not in the mask: unchanged
  auto updated = Update(a_.key, patch, {"model"});
  ASSERT_THAT(updated, IsOk());
  EXPECT_EQ(updated->id(), dep->id());
  EXPECT_EQ(updated->model(), second);
  EXPECT_EQ(updated->replicas(), 1);
  EXPECT_EQ(updated->state(), v1::DEPLOYMENT_STATE_CREATING);
  EXPECT_EQ(updated->ready_replicas(), 0);
  ASSERT_TRUE(watch->Read(&desired));
  ASSERT_THAT(desired.deployments(), SizeIs(1));
  EXPECT_EQ(desired.deployments(0).deployment().id(), dep->id());
  EXPECT_EQ(desired.deployments(0).deployment().model(), second);
  EXPECT_EQ(desired.deployments(0).adapter_artifact(),
            "jobs/" + second.substr(second.rfind(':') + 1) + "/result");
  ASSERT_THAT(report_ready(), IsOk());
  v1::GetDeploymentRequest gd;
  gd.set_deployment_id(dep->id());
  auto now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->state(), v1::DEPLOYMENT_STATE_ACTIVE);

  // The filter policy and the replicas, then back to the base model itself.
  patch.Clear();
  patch.set_id(dep->id());
  patch.set_replicas(3);
  auto* rule = patch.mutable_content_filter()->add_rules();
  rule->set_category(v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  rule->set_threshold(v1::SEVERITY_LOW);
  updated = Update(a_.key, patch, {"content_filter", "replicas"});
  ASSERT_THAT(updated, IsOk());
  EXPECT_EQ(updated->replicas(), 3);
  EXPECT_EQ(updated->model(), second);
  EXPECT_EQ(updated->content_filter().rules_size(), 1);
  EXPECT_EQ(updated->state(), v1::DEPLOYMENT_STATE_ACTIVE) << "same model: still serving";
  ASSERT_TRUE(watch->Read(&desired));
  EXPECT_EQ(desired.deployments(0).deployment().content_filter().rules(0).threshold(),
            v1::SEVERITY_LOW);
  patch.Clear();
  patch.set_id(dep->id());
  patch.set_model(kBase);
  updated = Update(a_.key, patch, {"model"});
  ASSERT_THAT(updated, IsOk());
  ASSERT_TRUE(watch->Read(&desired));
  EXPECT_EQ(desired.deployments(0).base_model_artifact(), kBase);
  EXPECT_TRUE(desired.deployments(0).adapter_artifact().empty());
  // The first model is no longer deployed: it can go.
  v1::DeleteModelRequest dm;
  dm.set_model_id(first);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::DeleteModel, a_.key, dm), IsOk());

  // Durable: a restarted scheduler has the update.
  watch_ctx.TryCancel();
  while (watch->Read(&desired)) {
  }
  (void)watch->Finish();
  StopScheduler();
  StartScheduler();
  now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->model(), kBase);
  EXPECT_EQ(now->replicas(), 3);
}

TEST_F(ModelContentTest, UpdateDeploymentCallerErrorsNameTheProblem) {
  const std::string model = Model({{"adapter_config.json", "{}"}});
  // Another base model in the catalog.
  WriteBaseModel("other-base");
  v1::CreateDeploymentRequest cd;
  cd.set_model(model);
  auto dep = Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, cd);
  ASSERT_THAT(dep, IsOk());
  v1::Deployment patch;
  patch.set_id(dep->id());
  patch.set_model(kBase);

  absl::Status state_path = Update(a_.key, patch, {"state"}).status();
  EXPECT_THAT(state_path, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'state'")));
  errors::Details details = errors::GetDetails(state_path);
  EXPECT_EQ(details.reason, "INVALID_FIELD");
  ASSERT_THAT(details.field_violations, SizeIs(1));
  EXPECT_EQ(details.field_violations[0].field, "update_mask.paths");
  EXPECT_THAT(Update(a_.key, patch, {"model", "bogus.path"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'bogus.path'")));
  EXPECT_THAT(Update(a_.key, patch, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("update_mask")));
  v1::Deployment unknown = patch;
  unknown.set_id("dep-nope");
  EXPECT_THAT(Update(a_.key, unknown, {"model"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("dep-nope")));
  EXPECT_THAT(Update(b_.key, patch, {"model"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dep->id())));
  EXPECT_THAT(Update(a_.key, v1::Deployment(), {"model"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deployment.id")));
  v1::Deployment bad = patch;
  bad.set_model("ft:tiny-base:x:ftjob-nope");
  EXPECT_THAT(Update(a_.key, bad, {"model"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("ft:tiny-base:x:ftjob-nope")));
  bad.set_model("no-such-base");
  EXPECT_THAT(Update(a_.key, bad, {"model"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no-such-base")));
  bad.set_model("other-base");
  EXPECT_THAT(Update(a_.key, bad, {"model"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("other-base"), HasSubstr(kBase))));
  bad.set_replicas(65);
  EXPECT_THAT(Update(a_.key, bad, {"replicas"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("replicas")));
  bad = patch;
  bad.mutable_content_filter()->add_rules();
  EXPECT_THAT(Update(a_.key, bad, {"content_filter"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("content_filter.rules[0].category")));
  // Nothing changed.
  v1::GetDeploymentRequest gd;
  gd.set_deployment_id(dep->id());
  auto now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->model(), model);
  EXPECT_EQ(now->replicas(), 1);
}

// A content filter's classifier_deployment must name another deployment of
// the caller that serves a classification model (another tenant's is "not
// found", like an unknown id); a deployment so named cannot be deleted, nor
// switched to a model that does not classify, while another names it.
TEST_F(ModelContentTest, ClassifierDeploymentMustBeTheCallersClassificationDeployment) {
  const std::string chat_model = Model({{"adapter_config.json", "{}"}});
  const std::string classifier_model =
      Model({{"adapter_config.json", "{}"}}, v1::TRAINING_TASK_CLASSIFICATION);
  auto create = [&](const std::string& key, const std::string& id, const std::string& model,
                    const std::string& classifier) {
    v1::CreateDeploymentRequest cd;
    cd.set_deployment_id(id);
    cd.set_model(model);
    cd.mutable_content_filter()->set_classifier_deployment(classifier);
    return Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, key, cd);
  };
  ASSERT_THAT(create(a_.key, "clf", classifier_model, ""), IsOk());
  ASSERT_THAT(create(a_.key, "chat-bot", chat_model, ""), IsOk());
  ASSERT_THAT(create(b_.key, "b-clf", kBase, ""), IsOk());

  struct Case {
    std::string classifier;
    std::string says;  // "" when accepted
  };
  const std::vector<Case> cases = {
      {"nope", "deployment 'nope' not found"},
      {"b-clf", "deployment 'b-clf' not found"},  // another tenant's: as if unknown
      {"chat-bot", "not a classification model"},
      {"self", "cannot be its own classifier"},
      {"clf", ""},
  };
  // Accepted, or INVALID_ARGUMENT with one violation on `field` naming the id.
  auto check = [](const absl::StatusOr<v1::Deployment>& r, const Case& c,
                  const std::string& field) {
    if (c.says.empty()) {
      ASSERT_THAT(r, IsOk()) << c.classifier;
      EXPECT_EQ(r->content_filter().classifier_deployment(), c.classifier);
      return;
    }
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
                            ::testing::AllOf(HasSubstr(c.classifier), HasSubstr(c.says))))
        << c.classifier;
    errors::Details d = errors::GetDetails(r.status());
    ASSERT_THAT(d.field_violations, SizeIs(1)) << c.classifier;
    EXPECT_EQ(d.field_violations[0].field, field);
    EXPECT_THAT(d.field_violations[0].description, HasSubstr(c.classifier));
  };
  // CreateDeployment, the new deployment's own id being "self".
  for (const Case& c : cases) {
    check(create(a_.key, c.classifier == "clf" ? "guarded" : "self", chat_model, c.classifier), c,
          "content_filter.classifier_deployment");
  }
  // Nothing of tenant b's deployment shows through: its error is the unknown id's.
  EXPECT_THAT(create(a_.key, "x", chat_model, "b-clf").status().message(),
              ::testing::Not(HasSubstr(kBase)));

  // UpdateDeployment of "chat-bot" (its own id is its "self"; "guarded" is
  // the other chat deployment).
  for (Case c : cases) {
    if (c.classifier == "chat-bot") c.classifier = "guarded";
    if (c.classifier == "self") c.classifier = "chat-bot";
    v1::Deployment patch;
    patch.set_id("chat-bot");
    patch.mutable_content_filter()->set_classifier_deployment(c.classifier);
    check(Update(a_.key, patch, {"content_filter"}), c,
          "deployment.content_filter.classifier_deployment");
  }

  // "clf" is now the classifier of "chat-bot" and "guarded".
  v1::DeleteDeploymentRequest del;
  del.set_deployment_id("clf");
  auto refused = Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kFailedPrecondition,
                                ::testing::AllOf(HasSubstr("chat-bot"), HasSubstr("guarded"))));
  errors::Details d = errors::GetDetails(refused.status());
  EXPECT_EQ(d.reason, "CLASSIFIER_IN_USE");
  std::vector<std::string> subjects;
  for (const auto& v : d.precondition_violations) subjects.push_back(v.subject);
  EXPECT_THAT(subjects, ::testing::UnorderedElementsAre("chat-bot", "guarded"));
  // Another tenant: NOT_FOUND, whoever depends on it.
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, b_.key, del),
              StatusIs(absl::StatusCode::kNotFound));
  // Nor may it switch to a model that does not classify (same base).
  v1::Deployment to_chat;
  to_chat.set_id("clf");
  to_chat.set_model(chat_model);
  EXPECT_THAT(Update(a_.key, to_chat, {"model"}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr(chat_model), HasSubstr("guarded"))));

  // Survives a restart; once no policy names it, it goes.
  StopScheduler();
  StartScheduler();
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  for (const char* id : {"chat-bot", "guarded"}) {
    v1::Deployment patch;
    patch.set_id(id);
    ASSERT_THAT(Update(a_.key, patch, {"content_filter"}), IsOk()) << id;
  }
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::DeleteDeployment, a_.key, del),
              IsOk());
}

// The CLI against this scheduler: `models download` writes the archive (its
// sha256 checked; the progress is plain lines when stderr is not a
// terminal) and Python's tarfile reads it back; `deployments update`
// changes the deployment in place.
TEST_F(ModelContentTest, CliDownloadsAModelAndUpdatesADeployment) {
  std::string weights(1500000, 'w');
  const std::string model = Model({{"adapter_config.json", R"({"r": 8})"},
                                   {"adapter_model.safetensors", weights}});
  auto run = [&](const std::string& args, std::string* out, std::string* err) {
    return RunCli(args, a_.key, out, err);
  };
  std::string out, err;
  const std::string tar = dir_.Join("model.tar");
  ASSERT_EQ(run(absl::StrCat("models download ", model, " -o ", tar), &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("sha256 "));
  EXPECT_FALSE(std::filesystem::exists(tar + ".part"));
  // Not a terminal: whole lines, no carriage returns, the last one at 100%.
  EXPECT_EQ(err.find('\r'), std::string::npos) << err;
  EXPECT_THAT(err, HasSubstr("download " + tar + ": 100%"));
  EXPECT_THAT(err, HasSubstr(" of "));  // a line on the way: "69% (1.0 MiB of 1.4 MiB)"

  // Python's tarfile reads it: the files, under the model's folder.
  std::string root = model;
  for (char& c : root) c = c == ':' ? '_' : c;
  const std::string script = dir_.Join("read.py");
  std::ofstream(script) << "import sys, tarfile\n"
                           "with tarfile.open(sys.argv[1]) as t:\n"
                           "    for m in t.getmembers():\n"
                           "        data = t.extractfile(m).read() if m.isfile() else b''\n"
                           "        print(m.name, m.type.decode(), len(data), data[:12].decode())\n";
  if (std::system("python3 -c 'import tarfile' >/dev/null 2>&1") == 0) {
    std::string listing = dir_.Join("listing.txt");
    ASSERT_EQ(std::system(absl::StrCat("python3 ", script, " ", tar, " >", listing).c_str()), 0);
    std::ifstream in(listing);
    std::string text(std::istreambuf_iterator<char>(in), {});
    EXPECT_THAT(text, HasSubstr(root + " 5 0"));
    EXPECT_THAT(text, HasSubstr(root + "/adapter_config.json 0 8 {\"r\": 8}"));
    EXPECT_THAT(text, HasSubstr(root + "/adapter_model.safetensors 0 1500000 wwwwwwwwwwww"));
  } else {
    std::cout << "python3 not found: the archive is checked with the test's reader only\n";
  }
  std::ifstream in(tar, std::ios::binary);
  std::string bytes(std::istreambuf_iterator<char>(in), {});
  std::string error;
  auto entries = ReadTar(bytes, &error);
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[2].data, weights);

  // Errors: a base model is refused (4), an unknown one not found (3), a
  // bad key (5); nothing is left behind.
  const std::string other = dir_.Join("other.tar");
  EXPECT_EQ(run(absl::StrCat("models download ", kBase, " -o ", other), &out, &err), 4) << err;
  EXPECT_THAT(err, HasSubstr("base model"));
  EXPECT_EQ(run(absl::StrCat("models download ft:tiny-base:x:ftjob-nope -o ", other), &out, &err),
            3);
  EXPECT_THAT(err, HasSubstr("ft:tiny-base:x:ftjob-nope"));
  EXPECT_FALSE(std::filesystem::exists(other));
  EXPECT_FALSE(std::filesystem::exists(other + ".part"));

  // jobs events --follow on a job with progress: not a terminal, so one
  // plain line per metrics event (step/total, loss, tokens/s, ETA).
  Running job = StartOne("node-a");
  ASSERT_THAT(Progress(job.asg, 10), IsOk());
  ASSERT_THAT(Complete(job.asg, true, "jobs/" + job.job + "/result"), IsOk());
  ASSERT_EQ(run(absl::StrCat("jobs events ", job.job, " --follow"), &out, &err), 0) << err;
  EXPECT_EQ(out.find('\r'), std::string::npos) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("step 10/100 epoch [0-9.]+ loss 0.2000 [0-9]+ tok/s ETA"));
  EXPECT_THAT(out, HasSubstr("state → succeeded"));
  // jobs metrics (one GetJobMetrics call): the table row and the chart.
  const std::string svg = dir_.Join("curve.svg");
  ASSERT_EQ(run(absl::StrCat("jobs metrics ", job.job, " --plot ", svg), &out, &err), 0) << err;
  EXPECT_THAT(out, ::testing::ContainsRegex("STEP +EPOCH +TRAIN +VALID +ACC +TOK/S\n +10 +"
                                            "[0-9.]+ +0.2000 +- +"));
  EXPECT_THAT(err, HasSubstr("wrote " + svg));
  std::ifstream chart(svg);
  EXPECT_THAT(std::string(std::istreambuf_iterator<char>(chart), {}), HasSubstr("<svg"));

  // deployments update: the model and the filter policy, same id.
  ASSERT_EQ(run(absl::StrCat("deployments create --model ", kBase), &out, &err), 0) << err;
  const std::string dep = out.substr(0, out.find(' '));
  ASSERT_TRUE(absl::StartsWith(dep, "dep-")) << out;
  ASSERT_EQ(run(absl::StrCat("deployments update ", dep, " --model ", model,
                             " --filter violence:low --filter self_harm --json"),
                &out, &err),
            0)
      << err;
  EXPECT_THAT(out, HasSubstr(dep));
  v1::GetDeploymentRequest gd;
  gd.set_deployment_id(dep);
  auto now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->model(), model);
  ASSERT_EQ(now->content_filter().rules_size(), 2);
  EXPECT_EQ(now->content_filter().rules(0).category(), v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  EXPECT_EQ(now->content_filter().rules(0).threshold(), v1::SEVERITY_LOW);
  EXPECT_EQ(now->content_filter().rules(1).category(), v1::CONTENT_FILTER_CATEGORY_SELF_HARM);
  EXPECT_EQ(run(absl::StrCat("deployments update ", dep, " --filter gore"), &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("unknown category 'gore'"));
  EXPECT_EQ(run(absl::StrCat("deployments update ", dep), &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("nothing to change"));
  EXPECT_EQ(run("deployments update dep-nope --replicas 2", &out, &err), 3);
  EXPECT_THAT(err, HasSubstr("dep-nope"));
  EXPECT_EQ(run(absl::StrCat("deployments update ", dep, " --replicas 2 --no-content-filter"),
                &out, &err),
            0)
      << err;
  now = Call(dep_stub_.get(), &v1::DeploymentService::Stub::GetDeployment, a_.key, gd);
  EXPECT_EQ(now->replicas(), 2);
  EXPECT_TRUE(now->content_filter().disabled());
  EXPECT_EQ(now->model(), model);
}

// Continuing from a fine-tuned model: the caller's LoRA model, trained
// further on its root base from its adapter, with the adapter's shape.
TEST_F(ModelContentTest, ContinuesTrainingFromAFineTunedModel) {
  const std::string from = Model(
      {{"adapter_config.json",
        R"({"peft_type":"LORA","r":4,"lora_alpha":8.0,"target_modules":["q_proj","v_proj"]})"},
       {"adapter_model.safetensors", "weights"}});
  const std::string from_job = from.substr(from.rfind(':') + 1);
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_base_model(from);
  req.set_suffix("more");

  // Another tenant's model, an unknown one, a malformed ft: id: NOT_FOUND.
  EXPECT_THAT(CreateJob(b_.key, req), StatusIs(absl::StatusCode::kNotFound, HasSubstr(from)));
  v1::CreateJobRequest unknown = req;
  unknown.set_base_model(absl::StrCat("ft:", kBase, ":mine:ftjob-nope"));
  EXPECT_THAT(CreateJob(a_.key, unknown), StatusIs(absl::StatusCode::kNotFound));
  unknown.set_base_model("ft:nonsense");
  EXPECT_THAT(CreateJob(a_.key, unknown), StatusIs(absl::StatusCode::kNotFound));

  // A shape other than the adapter's: one field violation each.
  v1::CreateJobRequest bad = req;
  bad.set_adapter(v1::ADAPTER_TYPE_FULL);
  bad.mutable_hyperparameters()->set_lora_rank(8);
  bad.mutable_hyperparameters()->add_lora_target_modules("o_proj");
  auto refused = CreateJob(a_.key, bad);
  ASSERT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument));
  std::set<std::string> fields;
  for (const auto& v : errors::GetDetails(refused.status()).field_violations) fields.insert(v.field);
  EXPECT_THAT(fields, ElementsAre("adapter", "hyperparameters.lora_rank",
                                  "hyperparameters.lora_target_modules"));

  // Matching values or auto: accepted; the job reports the adapter's shape.
  req.mutable_hyperparameters()->set_lora_rank(4);
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->base_model(), from);
  EXPECT_EQ(job->adapter(), v1::ADAPTER_TYPE_LORA);
  EXPECT_EQ(job->hyperparameters().lora_rank(), 4);
  EXPECT_DOUBLE_EQ(job->hyperparameters().lora_alpha(), 8.0);
  EXPECT_THAT(job->hyperparameters().lora_target_modules(), ElementsAre("q_proj", "v_proj"));

  // The agent trains on the root base, starting from the model's adapter;
  // a restart keeps that.
  StopScheduler();
  StartScheduler();
  std::string node = RegisterNode("node-a", 1);  // the one node, again
  scheduler_->Tick(clock_.Now());
  auto hb = Heartbeat(node);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  const iv1::Assignment& a = hb->assignments(0);
  EXPECT_EQ(a.job_id(), job->id());
  EXPECT_EQ(a.base_model(), kBase);
  EXPECT_EQ(a.init_adapter_artifact(), "jobs/" + from_job + "/result");
  EXPECT_EQ(a.hyperparameters().lora_rank(), 4);
  ASSERT_THAT(Complete(a.assignment_id(), true, "jobs/" + job->id() + "/result"), IsOk());

  // The result is a model of the root base.
  auto done = GetJob(a_.key, job->id());
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->base_model(), from);
  EXPECT_EQ(done->result_model(), absl::StrCat("ft:", kBase, ":more:", job->id()));
  v1::GetModelRequest gm;
  gm.set_model_id(done->result_model());
  auto model = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm);
  ASSERT_THAT(model, IsOk());
  EXPECT_EQ(model->base_model(), kBase);
  EXPECT_EQ(model->job_id(), job->id());

  // A model whose files are gone cannot be continued.
  std::filesystem::remove_all(dir_.Join("artifacts") + "/jobs/" + from_job);
  req.clear_request_id();
  EXPECT_THAT(CreateJob(a_.key, req), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(from)));
}

// A LoRA checkpoint is a model: listed with its id, readable, downloadable,
// deployable (its adapter/ directory), continuable, not deletable.
TEST_F(ModelContentTest, CheckpointsAreDeployableModels) {
  Running r = StartOne("node-a");
  const std::string ckpt_artifact = "jobs/" + r.job + "/checkpoints/step-00000005";
  const std::string adapter_dir = dir_.Join("artifacts") + "/" + ckpt_artifact + "/adapter";
  std::filesystem::create_directories(adapter_dir);
  std::ofstream(adapter_dir + "/adapter_config.json")
      << R"({"peft_type":"LORA","r":8,"lora_alpha":16.0,"target_modules":["q_proj"]})";
  std::ofstream(adapter_dir + "/adapter_model.safetensors") << "weights";
  ASSERT_THAT(Checkpoint(r.asg, 5, ckpt_artifact), IsOk());
  const std::string id = absl::StrCat("ft:", kBase, ":mine:", r.job, ":ckpt-step-5");

  v1::ListCheckpointsRequest lc;
  lc.set_job_id(r.job);
  auto cks = Call(job_stub_.get(), &v1::JobService::Stub::ListCheckpoints, a_.key, lc);
  ASSERT_THAT(cks, IsOk());
  ASSERT_THAT(cks->checkpoints(), SizeIs(1));
  EXPECT_EQ(cks->checkpoints(0).model(), id);

  v1::GetModelRequest gm;
  gm.set_model_id(id);
  auto model = Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm);
  ASSERT_THAT(model, IsOk());
  EXPECT_EQ(model->id(), id);
  EXPECT_EQ(model->kind(), v1::MODEL_KIND_FINE_TUNED);
  EXPECT_EQ(model->base_model(), kBase);
  EXPECT_EQ(model->job_id(), r.job);
  EXPECT_EQ(model->format_type(), v1::MODEL_FORMAT_LORA);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, b_.key, gm),
              StatusIs(absl::StatusCode::kNotFound));
  for (const std::string& wrong :
       {absl::StrCat("ft:", kBase, ":mine:", r.job, ":ckpt-step-6"),
        absl::StrCat("ft:", kBase, ":other:", r.job, ":ckpt-step-5"),
        absl::StrCat("ft:", kBase, ":mine:", r.job, ":step-5")}) {
    gm.set_model_id(wrong);
    EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm),
                StatusIs(absl::StatusCode::kNotFound)) << wrong;
  }

  grpc::Status st;
  auto chunks = Download(a_.key, id, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::string tar;
  for (const auto& c : chunks) tar += c.data();
  std::string error;
  std::set<std::string> names;
  for (const auto& e : ReadTar(tar, &error)) names.insert(e.name);
  EXPECT_THAT(names, Contains(HasSubstr("/adapter_config.json")));
  Download(b_.key, id, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);

  auto replica = RegisterReplica();
  ASSERT_THAT(replica, IsOk());
  v1::CreateDeploymentRequest cd;
  cd.set_model(id);
  EXPECT_THAT(Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, b_.key, cd),
              StatusIs(absl::StatusCode::kNotFound));
  auto dep = Call(dep_stub_.get(), &v1::DeploymentService::Stub::CreateDeployment, a_.key, cd);
  ASSERT_THAT(dep, IsOk());
  EXPECT_EQ(dep->model(), id);
  auto desired = scheduler_->DesiredDeployments(replica->replica_id());
  ASSERT_THAT(desired, IsOk());
  ASSERT_THAT(desired->deployments(), SizeIs(1));
  EXPECT_EQ(desired->deployments(0).base_model_artifact(), kBase);
  EXPECT_EQ(desired->deployments(0).adapter_artifact(), ckpt_artifact + "/adapter");
  gm.set_model_id(id);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::GetModel, a_.key, gm)->deployments(),
              ElementsAre(dep->id()));

  v1::DeleteModelRequest dm;
  dm.set_model_id(id);
  EXPECT_THAT(Call(model_stub_.get(), &v1::ModelService::Stub::DeleteModel, a_.key, dm),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("checkpoint")));

  // A job may continue from the checkpoint too.
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_base_model(id);
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, IsOk());
  EXPECT_THAT(job->hyperparameters().lora_target_modules(), ElementsAre("q_proj"));
}

// A file uploaded without a base model has no token statistics; the job
// counts them with its base's tokenizer, so the estimates follow the data:
// attention spans bounded by the longest example, trained tokens counted
// (until the base has a tokenizer, both stay on their upper bounds and the
// job's first event says so).
TEST_F(SchedulerServiceTest, EstimatesCountTheFilesTokensWithTheBasesTokenizer) {
  if (!std::filesystem::exists(text::DefaultLlamaVocabSource())) {
    GTEST_SKIP() << "the npm vocabulary is not installed (scripts/install-deps)";
  }
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  EXPECT_FALSE(file->validation().statistics().has_tokens_per_example());
  auto uncounted = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(uncounted, IsOk());
  const v1::Hyperparameters& h = uncounted->hyperparameters();
  TF_ASSERT_OK_AND_ASSIGN(model::ModelConfig config, model::ParseModelConfig(kTinyLlamaConfig));
  model::TrainingMemoryInput in;
  in.lora_rank = h.lora_rank();
  in.lora_targets.assign(h.lora_target_modules().begin(), h.lora_target_modules().end());
  in.micro_batch_size = h.micro_batch_size();
  in.sequence_length = h.max_sequence_length();
  in.gradient_checkpointing = h.gradient_checkpointing();
  EXPECT_EQ(uncounted->memory_estimate().activations_bytes(),
            model::EstimateTrainingMemory(config, in).activations);
  EXPECT_EQ(uncounted->estimated_trained_tokens(),
            file->bytes() / 4 * h.batch_size() * uncounted->total_steps() / 20);
  EXPECT_THAT(EventMessages(uncounted->id()).at(0),
              AllOf(HasSubstr("tokens not counted"), HasSubstr("tiny-base")));

  // The base gets its tokenizer: the next job's estimates use the counts
  // the dataset service reports for the file with it.
  TF_ASSERT_OK(text::WritePhi3TokenizerFiles(dir_.Join("models/") + kBase));
  v1::ValidateFileRequest vreq;
  vreq.set_file_id(file->id());
  vreq.set_base_model(kBase);
  auto report = Call(files_stub_.get(), &v1::DatasetService::Stub::ValidateFile, a_.key, vreq);
  ASSERT_THAT(report, IsOk());
  const int64_t longest =
      static_cast<int64_t>(report->statistics().tokens_per_example().max());
  ASSERT_GT(longest, 0);
  ASSERT_LT(longest, h.max_sequence_length());
  auto counted = CreateJob(a_.key, JobRequest(file->id()));
  ASSERT_THAT(counted, IsOk());
  in.longest_example = longest;
  EXPECT_EQ(counted->memory_estimate().activations_bytes(),
            model::EstimateTrainingMemory(config, in).activations);
  EXPECT_LT(counted->memory_estimate().total_bytes(), uncounted->memory_estimate().total_bytes());
  EXPECT_EQ(counted->estimated_trained_tokens(),
            static_cast<int64_t>(static_cast<double>(report->statistics().trained_tokens()) / 20 *
                                 static_cast<double>(h.batch_size() * counted->total_steps())));
  EXPECT_THAT(EventMessages(counted->id()).at(0),
              AllOf(HasSubstr("job created"), Not(HasSubstr("not counted"))));
}

TEST_F(SchedulerServiceTest, JobsGoOnlyToGpusThatHoldTheirMemoryEstimate) {
  auto file = UploadProcessed(a_.key, ChatJsonl(20));
  ASSERT_THAT(file, IsOk());
  v1::CreateJobRequest req = JobRequest(file->id());
  req.set_validate_only(true);
  // No GPU registered: the estimate is a CPU worker's (fp32).
  auto cpu_preview = CreateJob(a_.key, req);
  ASSERT_THAT(cpu_preview, IsOk());
  EXPECT_EQ(cpu_preview->memory_estimate().dtype(), "float32");
  const int64_t cpu_bytes = cpu_preview->memory_estimate().total_bytes();

  EXPECT_THAT(RegisterGpuNode("bad", 1, -1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gpus[0].memory_bytes")));
  // Two 1 MiB GPUs hold no job of the tiny model (tens of MiB).
  auto tiny = RegisterGpuNode("tiny-gpus", 2, int64_t{1} << 20);
  ASSERT_THAT(tiny, IsOk());
  req.set_validate_only(false);
  auto refused = CreateJob(a_.key, req);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kFailedPrecondition,
                                HasSubstr("of GPU memory per rank (memory_estimate in bf16) and no "
                                          "registered GPU holds it (the largest has 0.0 GiB)")));
  errors::Details d = errors::GetDetails(refused.status());
  ASSERT_EQ(d.precondition_violations.size(), 1u);
  EXPECT_EQ(d.precondition_violations[0].type, "MEMORY");

  // One 80 GiB GPU: the job is admitted with a GPU's estimate (bf16, less
  // than the CPU's) and runs there, never on the small GPUs.
  auto big = RegisterGpuNode("big-gpu", 1, int64_t{80} << 30);
  ASSERT_THAT(big, IsOk());
  auto job = CreateJob(a_.key, req);
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->memory_estimate().dtype(), "bfloat16");
  EXPECT_LT(job->memory_estimate().total_bytes(), cpu_bytes);
  const int64_t gpu_bytes = job->memory_estimate().total_bytes();
  // Two ranks: only one GPU of the fleet's three holds them.
  v1::CreateJobRequest two = req;
  two.set_gpus(2);
  EXPECT_THAT(CreateJob(a_.key, two),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("only 1 registered GPUs hold it, of the 2 it needs")));
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(job->id()), v1::JOB_STATE_RUNNING);
  auto hb = Heartbeat(tiny->node_id());
  ASSERT_THAT(hb, IsOk());
  EXPECT_THAT(hb->assignments(), IsEmpty());
  hb = Heartbeat(big->node_id());
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).job_id(), job->id());

  // A second job waits (the big GPU is busy; the small ones do not hold
  // it), then lands on a CPU node registered later: its estimate becomes
  // the CPU worker's.
  auto second = CreateJob(a_.key, req);
  ASSERT_THAT(second, IsOk());
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(second->id()), v1::JOB_STATE_QUEUED);
  std::string cpu = RegisterNode("cpu-a", 1);
  scheduler_->Tick(clock_.Now());
  EXPECT_EQ(State(second->id()), v1::JOB_STATE_RUNNING);
  auto placed = GetJob(a_.key, second->id());
  ASSERT_THAT(placed, IsOk());
  EXPECT_EQ(placed->memory_estimate().dtype(), "float32");
  EXPECT_EQ(placed->memory_estimate().total_bytes(), cpu_bytes);
  hb = Heartbeat(cpu);
  ASSERT_THAT(hb, IsOk());
  ASSERT_THAT(hb->assignments(), SizeIs(1));
  EXPECT_EQ(hb->assignments(0).job_id(), second->id());
  // The first kept the GPU's.
  EXPECT_EQ(GetJob(a_.key, job->id())->memory_estimate().total_bytes(), gpu_bytes);
  // A job's ranks are all GPUs or all CPU slots: four ranks fit neither the
  // three GPUs nor the one CPU slot.
  v1::CreateJobRequest four = req;
  four.set_gpus(4);
  EXPECT_THAT(CreateJob(a_.key, four),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the job needs 4 slots of one kind and the registered fleet has "
                                 "3 GPUs and 1 CPU slots")));
}

}  // namespace
}  // namespace tunefleet::scheduler
