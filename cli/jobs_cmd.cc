// tunefleet jobs create|list|get|events|metrics|cancel|pause|resume|checkpoints
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/plot.h"
#include "tunefleet/v1/jobs.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::JobService;

struct JobsArgs {
  ClientFlags flags;
  std::string job_id;
  // create
  std::string model, training_file, validation_file, method = "supervised", adapter = "lora",
      task = "chat", suffix, request_id, lr_scheduler, packing;
  double validation_split = 0;
  int epochs = 0, batch_size = 0, lora_rank = 0, max_seq_len = 0, gpus = 0, priority = 0;
  int micro_batch_size = 0, keep_checkpoints = 0, early_stopping_patience = -1;
  double lr_multiplier = 0, learning_rate = 0, lora_alpha = 0, lora_dropout = -1,
         warmup_ratio = -1, weight_decay = -1, dpo_beta = 0;
  int64_t seed = -1, max_steps = -1, checkpoint_interval = -1, eval_interval = -1;
  bool follow = false, gradient_checkpointing = false, write_merged = false,
       validate_only = false;
  // list
  std::string states;
  // metrics
  std::string plot;
  int64_t after = 0;
};

std::string StateName(v1::JobState s) {
  std::string name = v1::JobState_Name(s);
  return name.size() > 10 ? absl::AsciiStrToLower(name.substr(10)) : name;
}

std::string Duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  int s = static_cast<int>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

void PrintJobRow(const v1::Job& j) {
  std::cout << absl::StrFormat("%-28s %-11s %-26s %6d/%-6d %s\n", j.id(), StateName(j.state()),
                               j.base_model(), j.completed_steps(), j.total_steps(),
                               j.result_model());
}

std::string EnumName(const std::string& name, absl::string_view prefix) {
  return absl::AsciiStrToLower(absl::StartsWith(name, prefix) ? name.substr(prefix.size()) : name);
}

std::string AdapterName(v1::AdapterType a) {
  return a == v1::ADAPTER_TYPE_FULL ? "full" : "lora";
}

// "supervised" or "dpo beta=0.1".
std::string MethodText(const v1::Method& m) {
  if (m.has_dpo()) return absl::StrFormat("dpo beta=%g", m.dpo().beta());
  return "supervised";
}

std::string Bytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

void PrintJob(const v1::Job& j, const std::vector<double>& losses) {
  const auto& h = j.hyperparameters();
  std::cout << "job            " << j.id() << "\n"
            << "state          " << StateName(j.state()) << "\n"
            << "base model     " << j.base_model() << "\n"
            << "training file  " << j.training_file() << "\n"
            << "validation     " << (j.validation_file().empty() ? "-" : j.validation_file())
            << "\n"
            << "adapter        " << AdapterName(j.adapter())
            << (j.write_merged() ? " (+ merged weights)" : "") << "\n"
            << "method         " << MethodText(j.method()) << "\n"
            << "task           " << EnumName(v1::TrainingTask_Name(j.task()), "TRAINING_TASK_")
            << "\n"
            << absl::StrFormat(
                   "hyperparameters epochs %d, batch %d (micro %d), lr %.3g (x%g, %s, warmup %g, "
                   "weight decay %g), max steps %d, max length %d, seed %d\n",
                   h.epochs(), h.batch_size(), h.micro_batch_size(), h.learning_rate(),
                   h.learning_rate_multiplier(),
                   EnumName(v1::LrScheduler_Name(h.lr_scheduler()), "LR_SCHEDULER_"),
                   h.warmup_ratio(), h.weight_decay(), h.max_steps(), h.max_sequence_length(),
                   h.seed())
            << (j.adapter() == v1::ADAPTER_TYPE_FULL
                    ? std::string()
                    : absl::StrFormat("lora           r=%d alpha=%g dropout %g\n", h.lora_rank(),
                                      h.lora_alpha(), h.lora_dropout()))
            << absl::StrFormat(
                   "schedule       packing %s, gradient checkpointing %s, checkpoint every %d, "
                   "eval every %d, keep %d, early stopping patience %d\n",
                   h.packing() ? "on" : "off", h.gradient_checkpointing() ? "on" : "off",
                   h.checkpoint_interval_steps(), h.eval_interval_steps(), h.keep_checkpoints(),
                   h.early_stopping_patience())
            << "steps          " << j.completed_steps() << " / " << j.total_steps() << "\n"
            << "trained tokens " << j.trained_tokens() << "\n";
  if (j.has_memory_estimate()) {
    const auto& m = j.memory_estimate();
    std::cout << "memory / rank  " << Bytes(m.total_bytes()) << " (weights "
              << Bytes(m.weights_bytes()) << ", gradients " << Bytes(m.gradients_bytes())
              << ", optimizer " << Bytes(m.optimizer_state_bytes()) << ", activations "
              << Bytes(m.activations_bytes())
              << (m.dtype().empty() ? "" : ", " + m.dtype()) << ")";
    if (m.measured_peak_bytes() > 0) {
      std::cout << ", measured peak " << Bytes(m.measured_peak_bytes());
      if (m.measured_runtime_bytes() > 0)
        std::cout << " (" << Bytes(m.measured_runtime_bytes()) << " of it before the model)";
    }
    std::cout << "\n";
  }
  if (j.state() == v1::JOB_STATE_QUEUED) std::cout << "queue position " << j.queue_position() << "\n";
  if (!j.result_model().empty()) std::cout << "result model   " << j.result_model() << "\n";
  if (!j.error().message().empty()) {
    std::cout << "error          " << j.error().message() << " [" << j.error().code() << "]\n";
  }
  if (!losses.empty()) {
    std::cout << "train loss     " << Sparkline(losses) << absl::StrFormat("  %.3f → %.3f\n",
                                                                           losses.front(),
                                                                           losses.back());
  }
}

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

// Reads the job's events. Without `follow`, stops once the replay has gone
// quiet for a moment (the server follows a live job forever otherwise).
absl::Status ReadEvents(Endpoint& endpoint, const std::string& job_id, int64_t after, bool follow,
                        const std::function<void(const v1::JobEvent&)>& on_event) {
  auto channel = ChannelOf(endpoint);
  if (!channel.ok()) return channel.status();
  auto stub = JobService::NewStub(*channel);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, follow ? absl::Hours(72) : absl::Minutes(5));
  v1::StreamJobEventsRequest req;
  req.set_job_id(job_id);
  req.set_after_sequence(after);
  auto reader = stub->StreamJobEvents(&ctx, req);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Time last = absl::Now();
  std::thread quiet;
  if (!follow) {
    quiet = std::thread([&] {
      std::unique_lock<std::mutex> lock(mu);
      while (!done) {
        if (absl::Now() - last > absl::Milliseconds(700)) {
          ctx.TryCancel();
          return;
        }
        cv.wait_for(lock, std::chrono::milliseconds(100));
      }
    });
  }
  v1::JobEvent event;
  bool cancelled_by_us = false;
  // Whether the server ended the stream (with its status: NOT_FOUND, a bad
  // key...) rather than this loop leaving it early.
  bool server_ended = true;
  while (reader->Read(&event)) {
    {
      std::lock_guard<std::mutex> lock(mu);
      last = absl::Now();
    }
    on_event(event);
    if (event.payload_case() == v1::JobEvent::kState && Terminal(event.state()) && follow) {
      server_ended = false;
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    cancelled_by_us = !follow && absl::Now() - last > absl::Milliseconds(700);
    done = true;
  }
  cv.notify_all();
  if (quiet.joinable()) quiet.join();
  // Cancelling a stream the server already ended would hide its status.
  if (!server_ended) ctx.TryCancel();
  grpc::Status status = reader->Finish();
  if (!status.ok() && !((cancelled_by_us || !server_ended) &&
                        status.error_code() == grpc::StatusCode::CANCELLED)) {
    return rpc::FromGrpcStatus(status);
  }
  return absl::OkStatus();
}

std::string FormatEvent(const v1::JobEvent& e) {
  std::string when = google::protobuf::util::TimeUtil::ToString(e.created_at()).substr(11, 8);
  switch (e.payload_case()) {
    case v1::JobEvent::kState:
      return absl::StrCat(when, "  state → ", StateName(e.state()),
                          e.message().empty() ? "" : absl::StrCat(": ", e.message()));
    case v1::JobEvent::kMetrics: {
      const auto& m = e.metrics();
      std::string line = absl::StrFormat("%s  step %d epoch %.2f train loss %.4f acc %.3f lr %.2e",
                                         when, m.step(), m.epoch(), m.train_loss(),
                                         m.train_token_accuracy(), m.learning_rate());
      if (m.has_valid_loss()) absl::StrAppendFormat(&line, " valid loss %.4f", m.valid_loss());
      if (m.tokens_per_second() > 0) absl::StrAppendFormat(&line, " %.0f tok/s", m.tokens_per_second());
      return line;
    }
    case v1::JobEvent::kCheckpointId:
      return absl::StrCat(when, "  checkpoint ", e.checkpoint_id(), " ", e.message());
    default:
      return absl::StrCat(when, "  ", e.message());
  }
}

// Follows a job with one progress line (redrawn in place on a terminal).
int Follow(Endpoint& endpoint, const std::string& job_id) {
  bool tty = isatty(STDOUT_FILENO);
  int64_t total = 0;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  absl::Status s = ReadEvents(endpoint, job_id, 0, true, [&](const v1::JobEvent& e) {
    if (e.payload_case() == v1::JobEvent::kMetrics) {
      const auto& m = e.metrics();
      if (total == 0) {
        auto job = Call<JobService>(endpoint, &JobService::Stub::GetJob,
                                    [&] { v1::GetJobRequest r; r.set_job_id(job_id); return r; }());
        if (job.ok()) total = job->total_steps();
      }
      double eta = m.tokens_per_second() > 0 && total > 0 && m.step() > 0
                       ? (total - m.step()) * (m.trained_tokens() / static_cast<double>(m.step())) /
                             m.tokens_per_second()
                       : -1;
      int width = 24, filled = total > 0 ? static_cast<int>(width * m.step() / total) : 0;
      std::string bar = std::string(std::clamp(filled, 0, width), '#') +
                        std::string(width - std::clamp(filled, 0, width), '.');
      std::string line = absl::StrFormat(
          "[%s] step %d/%d epoch %.2f loss %.4f%s %.0f tok/s ETA %s", bar, m.step(), total,
          m.epoch(), m.train_loss(),
          m.has_valid_loss() ? absl::StrFormat(" valid %.4f", m.valid_loss()) : "",
          m.tokens_per_second(), Duration(eta));
      std::cout << (tty ? "\r\033[K" : "") << line << (tty ? "" : "\n") << std::flush;
      return;
    }
    if (tty) std::cout << "\r\033[K";
    std::cout << FormatEvent(e) << "\n" << std::flush;
    if (e.payload_case() == v1::JobEvent::kState) final_state = e.state();
  });
  if (tty) std::cout << "\n";
  if (!s.ok()) return Fail(s);
  if (final_state == v1::JOB_STATE_SUCCEEDED) return 0;
  return final_state == v1::JOB_STATE_CANCELLED ? 4 : 1;
}

absl::StatusOr<std::vector<v1::TrainingMetrics>> Metrics(Endpoint& endpoint,
                                                         const std::string& job_id) {
  v1::GetJobMetricsRequest req;
  req.set_job_id(job_id);
  auto metrics = Call<JobService>(endpoint, &JobService::Stub::GetJobMetrics, req);
  if (!metrics.ok()) return metrics.status();
  return std::vector<v1::TrainingMetrics>(metrics->steps().begin(), metrics->steps().end());
}

int Run(JobsArgs& a, const std::string& verb) {
  auto endpoint = ResolveService(a.flags, "scheduler");
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto show = [&](const v1::Job& j) {
    if (a.flags.json) {
      std::cout << ToJson(j) << "\n";
    } else {
      PrintJob(j, {});
    }
  };
  if (verb == "create") {
    v1::CreateJobRequest req;
    req.set_base_model(a.model);
    req.set_training_file(a.training_file);
    req.set_validation_file(a.validation_file);
    if (a.validation_split > 0) req.set_validation_split(a.validation_split);
    if (a.adapter == "lora") {
      req.set_adapter(v1::ADAPTER_TYPE_LORA);
    } else if (a.adapter == "full") {
      req.set_adapter(v1::ADAPTER_TYPE_FULL);
    } else {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--adapter must be lora or full, not '", a.adapter, "'")));
    }
    if (a.method == "supervised") {
      if (a.dpo_beta != 0) {
        return Fail(absl::InvalidArgumentError("--dpo-beta applies only to --method dpo"));
      }
      req.mutable_method()->mutable_supervised();
    } else if (a.method == "dpo") {
      if (a.dpo_beta != 0) req.mutable_method()->mutable_dpo()->set_beta(a.dpo_beta);
      else req.mutable_method()->mutable_dpo();
    } else {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--method must be supervised or dpo, not '", a.method, "'",
          a.method == "lora" || a.method == "full" ? " (the adapter is --adapter)" : "")));
    }
    if (a.task == "chat") {
      req.set_task(v1::TRAINING_TASK_CHAT);
    } else if (a.task == "classification") {
      req.set_task(v1::TRAINING_TASK_CLASSIFICATION);
    } else {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--task must be chat or classification, not '", a.task, "'")));
    }
    auto* h = req.mutable_hyperparameters();
    if (a.epochs > 0) h->set_epochs(a.epochs);
    if (a.batch_size > 0) h->set_batch_size(a.batch_size);
    if (a.lr_multiplier > 0) h->set_learning_rate_multiplier(a.lr_multiplier);
    if (a.lora_rank > 0) h->set_lora_rank(a.lora_rank);
    if (a.lora_alpha > 0) h->set_lora_alpha(a.lora_alpha);
    if (a.lora_dropout >= 0) h->set_lora_dropout(a.lora_dropout);
    if (a.warmup_ratio >= 0) h->set_warmup_ratio(a.warmup_ratio);
    if (a.max_seq_len > 0) h->set_max_sequence_length(a.max_seq_len);
    if (a.seed >= 0) h->set_seed(a.seed);
    if (a.learning_rate != 0) h->set_learning_rate(a.learning_rate);
    if (a.micro_batch_size != 0) h->set_micro_batch_size(a.micro_batch_size);
    if (a.weight_decay >= 0) h->set_weight_decay(a.weight_decay);
    if (!a.lr_scheduler.empty()) {
      v1::LrScheduler sch;
      if (!v1::LrScheduler_Parse(absl::StrCat("LR_SCHEDULER_", absl::AsciiStrToUpper(a.lr_scheduler)),
                                 &sch) ||
          sch == v1::LR_SCHEDULER_UNSPECIFIED) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "--lr-scheduler must be cosine, linear or constant, not '", a.lr_scheduler, "'")));
      }
      h->set_lr_scheduler(sch);
    }
    if (a.max_steps >= 0) h->set_max_steps(a.max_steps);
    if (a.packing == "true" || a.packing == "false") {
      h->set_packing(a.packing == "true");
    } else if (!a.packing.empty()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--packing must be true or false, not '", a.packing, "'")));
    }
    if (a.gradient_checkpointing) h->set_gradient_checkpointing(true);
    if (a.keep_checkpoints != 0) h->set_keep_checkpoints(a.keep_checkpoints);
    if (a.early_stopping_patience >= 0) h->set_early_stopping_patience(a.early_stopping_patience);
    if (a.checkpoint_interval >= 0) h->set_checkpoint_interval_steps(a.checkpoint_interval);
    if (a.eval_interval >= 0) h->set_eval_interval_steps(a.eval_interval);
    req.set_write_merged(a.write_merged);
    req.set_validate_only(a.validate_only);
    req.set_suffix(a.suffix);
    req.set_gpus(a.gpus);
    req.set_priority(a.priority);
    req.set_request_id(a.request_id);
    auto job = Call<JobService>(*endpoint, &JobService::Stub::CreateJob, req);
    if (!job.ok()) return Fail(job.status());
    show(*job);
    if (a.follow && !a.validate_only) return Follow(*endpoint, job->id());
    return 0;
  }
  if (verb == "list") {
    v1::ListJobsRequest req;
    req.set_page_size(100);
    for (absl::string_view s : absl::StrSplit(a.states, ',', absl::SkipEmpty())) {
      v1::JobState state;
      if (!v1::JobState_Parse(absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(s)), &state)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("--state: unknown state '", s, "'")));
      }
      req.add_states(state);
    }
    if (!a.flags.json) {
      std::cout << absl::StrFormat("%-28s %-11s %-26s %13s %s\n", "JOB", "STATE", "BASE MODEL",
                                   "STEPS", "RESULT");
    }
    do {
      auto page = Call<JobService>(*endpoint, &JobService::Stub::ListJobs, req);
      if (!page.ok()) return Fail(page.status());
      for (const auto& j : page->jobs()) a.flags.json ? show(j) : PrintJobRow(j);
      req.set_page_token(page->next_page_token());
    } while (!req.page_token().empty());
    return 0;
  }
  if (verb == "get") {
    v1::GetJobRequest req;
    req.set_job_id(a.job_id);
    auto job = Call<JobService>(*endpoint, &JobService::Stub::GetJob, req);
    if (!job.ok()) return Fail(job.status());
    if (a.flags.json) {
      show(*job);
      return 0;
    }
    std::vector<double> losses;
    auto points = Metrics(*endpoint, a.job_id);
    if (points.ok()) {
      for (const auto& m : *points) losses.push_back(m.train_loss());
    }
    PrintJob(*job, losses);
    return 0;
  }
  if (verb == "events") {
    if (a.follow) return Follow(*endpoint, a.job_id);
    absl::Status s = ReadEvents(*endpoint, a.job_id, a.after, false, [&](const v1::JobEvent& e) {
      std::cout << (a.flags.json ? ToJson(e) : FormatEvent(e)) << "\n";
    });
    return s.ok() ? 0 : Fail(s);
  }
  if (verb == "metrics") {
    std::ofstream plot_file;
    if (!a.plot.empty()) {
      // A bad --plot path fails before the call, not after it.
      plot_file.open(a.plot, std::ios::trunc);
      if (!plot_file) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("--plot: cannot write ", a.plot)));
      }
    }
    auto points = Metrics(*endpoint, a.job_id);
    if (!points.ok()) return Fail(points.status());
    Series train{"train loss", "#1f77b4", false, {}}, valid{"validation loss", "#d62728", true, {}};
    Series acc{"train token accuracy", "#2ca02c", false, {}};
    if (!a.flags.json) {
      std::cout << absl::StrFormat("%6s %7s %10s %10s %8s %10s\n", "STEP", "EPOCH", "TRAIN",
                                   "VALID", "ACC", "TOK/S");
    }
    for (const auto& m : *points) {
      train.points.push_back({static_cast<double>(m.step()), m.train_loss()});
      acc.points.push_back({static_cast<double>(m.step()), m.train_token_accuracy()});
      if (m.has_valid_loss()) valid.points.push_back({static_cast<double>(m.step()), m.valid_loss()});
      if (a.flags.json) {
        std::cout << ToJson(m) << "\n";
      } else {
        std::cout << absl::StrFormat("%6d %7.2f %10.4f %10s %8.3f %10.0f\n", m.step(), m.epoch(),
                                     m.train_loss(),
                                     m.has_valid_loss() ? absl::StrFormat("%.4f", m.valid_loss())
                                                        : "-",
                                     m.train_token_accuracy(), m.tokens_per_second());
      }
    }
    if (!a.plot.empty()) {
      plot_file << RenderSvgChart(absl::StrCat("Training curve of ", a.job_id), "step",
                            {train, valid, acc});
      std::cerr << "wrote " << a.plot << "\n";
    }
    return 0;
  }
  if (verb == "cancel" || verb == "pause" || verb == "resume") {
    absl::StatusOr<v1::Job> job;
    if (verb == "cancel") {
      v1::CancelJobRequest r;
      r.set_job_id(a.job_id);
      job = Call<JobService>(*endpoint, &JobService::Stub::CancelJob, r);
    } else if (verb == "pause") {
      v1::PauseJobRequest r;
      r.set_job_id(a.job_id);
      job = Call<JobService>(*endpoint, &JobService::Stub::PauseJob, r);
    } else {
      v1::ResumeJobRequest r;
      r.set_job_id(a.job_id);
      job = Call<JobService>(*endpoint, &JobService::Stub::ResumeJob, r);
    }
    if (!job.ok()) return Fail(job.status());
    a.flags.json ? show(*job) : PrintJobRow(*job);
    return 0;
  }
  if (verb == "checkpoints") {
    v1::ListCheckpointsRequest req;
    req.set_job_id(a.job_id);
    req.set_page_size(100);
    do {
      auto page = Call<JobService>(*endpoint, &JobService::Stub::ListCheckpoints, req);
      if (!page.ok()) return Fail(page.status());
      for (const auto& c : page->checkpoints()) {
        if (a.flags.json) {
          std::cout << ToJson(c) << "\n";
        } else {
          std::cout << absl::StrFormat("%-30s step %-6d train loss %.4f  %s\n", c.id(), c.step(),
                                       c.metrics().train_loss(), c.model());
        }
      }
      req.set_page_token(page->next_page_token());
    } while (!req.page_token().empty());
    return 0;
  }
  return 0;
}

}  // namespace

void AddJobsCommands(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<JobsArgs>();
  auto* jobs = app->add_subcommand("jobs", "Fine-tuning jobs");
  jobs->require_subcommand(1);
  AddClientFlags(jobs, &a->flags, "scheduler");
  auto verb = [&](const std::string& name, const std::string& help, bool takes_id = true) {
    auto* c = jobs->add_subcommand(name, help);
    c->fallthrough();
    if (takes_id) c->add_option("id", a->job_id, "ftjob-…")->required();
    c->callback([a, name, exit_code] { *exit_code = Run(*a, name); });
    return c;
  };
  auto* create = verb("create", "Create a fine-tuning job", false);
  create->add_option("--model", a->model, "Base model id, or a fine-tuned model to continue")
      ->required();
  create->add_option("--training-file", a->training_file, "file-… (purpose fine-tune)")->required();
  create->add_option("--validation-file", a->validation_file, "file-… (optional)");
  create->add_option("--validation-split", a->validation_split,
                     "Split this fraction off the training file for validation");
  create->add_option("--method", a->method, "supervised or dpo")->capture_default_str();
  create->add_option("--adapter", a->adapter, "lora or full")->capture_default_str();
  create->add_option("--dpo-beta", a->dpo_beta, "DPO's beta, in (0, 10] (default: auto 0.1)");
  create->add_flag("--write-merged", a->write_merged, "Also write merged Hugging Face weights");
  create->add_flag("--validate-only", a->validate_only,
                   "Check and show the resolved job (memory estimate too) without creating it");
  create->add_option("--task", a->task, "chat or classification")->capture_default_str();
  create->add_option("--epochs", a->epochs, "Epochs (default: auto)");
  create->add_option("--batch-size", a->batch_size, "Examples per step (default: auto)");
  create->add_option("--learning-rate-multiplier", a->lr_multiplier,
                     "Times the adapter's base learning rate (default: auto)");
  create->add_option("--learning-rate", a->learning_rate,
                     "Absolute peak learning rate (instead of the multiplier)");
  create->add_option("--micro-batch-size", a->micro_batch_size,
                     "Examples per rank per forward pass; must divide batch / gpus");
  create->add_option("--weight-decay", a->weight_decay, "AdamW weight decay in [0, 1]");
  create->add_option("--lr-scheduler", a->lr_scheduler, "cosine, linear or constant");
  create->add_option("--max-steps", a->max_steps, "Stop after this many steps (0: epochs decide)");
  create->add_option("--packing", a->packing, "true or false (default: auto)");
  create->add_flag("--gradient-checkpointing", a->gradient_checkpointing,
                   "Recompute activations in backward (less memory)");
  create->add_option("--keep-checkpoints", a->keep_checkpoints, "Newest checkpoints kept");
  create->add_option("--early-stopping-patience", a->early_stopping_patience,
                     "Evaluations without improvement before stopping (0: never)");
  create->add_option("--checkpoint-interval", a->checkpoint_interval,
                     "Steps between checkpoints (0: epoch ends)");
  create->add_option("--eval-interval", a->eval_interval, "Steps between evaluations");
  create->add_option("--lora-rank", a->lora_rank, "LoRA rank (default: auto)");
  create->add_option("--lora-alpha", a->lora_alpha, "LoRA alpha (default: auto)");
  create->add_option("--lora-dropout", a->lora_dropout, "LoRA dropout (default: auto)");
  create->add_option("--warmup-ratio", a->warmup_ratio, "Warmup fraction of steps");
  create->add_option("--max-seq-len", a->max_seq_len, "Longest example in tokens");
  create->add_option("--seed", a->seed, "Seed (same seed, same result)");
  create->add_option("--suffix", a->suffix, "Part of the result model's id ([a-z0-9-])");
  create->add_option("--gpus", a->gpus, "Data-parallel ranks (default 1)");
  create->add_option("--priority", a->priority, "Higher runs first");
  create->add_option("--request-id", a->request_id, "Idempotency key");
  create->add_flag("--follow", a->follow, "Follow the job until it ends");
  verb("list", "List jobs", false)
      ->add_option("--state", a->states, "Comma-separated states, e.g. running,queued");
  verb("get", "Show a job (with a sparkline of its loss)");
  auto* events = verb("events", "The job's events");
  events->add_flag("--follow", a->follow, "Keep following until the job ends");
  events->add_option("--after", a->after, "Only events after this sequence number");
  verb("metrics", "Per-step metrics")
      ->add_option("--plot", a->plot, "Write the loss curve as an SVG chart to this file");
  verb("cancel", "Cancel a job");
  verb("pause", "Checkpoint and stop a job (resume continues it)");
  verb("resume", "Resume a paused job from its checkpoint");
  verb("checkpoints", "List a job's checkpoints");
}

}  // namespace tunefleet::cli
