#include "services/trainer/worker/trainer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/model/decoder.h"
#include "common/model/file_util.h"
#include "common/model/lora.h"
#include "common/model/torch_status.h"
#include "common/text/chat_template.h"
#include "services/trainer/worker/checkpoint.h"
#include "services/trainer/worker/data.h"
#include "services/trainer/worker/distributed.h"
#include "services/trainer/worker/file_hash.h"
#include "services/trainer/worker/optimizer.h"

namespace tunefleet::trainer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// libtorch throws; nothing escapes the worker library.
using model::internal::CatchTorch;

void Log(const std::string& line) { std::fprintf(stderr, "train-worker: %s\n", line.c_str()); }

void Report(const WorkerRunOptions& o, const ReportEvent& e) {
  if (o.report) {
    absl::Status s = o.report->Write(e);
    if (!s.ok()) Log(std::string(s.message()));
  }
}

std::string ChatFormatName(text::ChatFormat f) {
  switch (f) {
    case text::ChatFormat::kPhi3:
      return "phi3";
    case text::ChatFormat::kLlama3:
      return "llama3";
    case text::ChatFormat::kChatML:
      return "chatml";
    case text::ChatFormat::kQwen3:
      return "qwen3";
  }
  return "unknown";
}

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t tokens = 0;
};

// Everything one run holds.
class Run {
 public:
  Run(const WorkerSpec& spec, const WorkerRunOptions& options) : spec_(spec), options_(options) {}

  absl::StatusOr<WorkerOutcome> Go();

 private:
  absl::Status Load();
  absl::Status Setup();
  absl::StatusOr<EvalResult> Evaluate(const model::LoraAdapter* adapter);
  absl::Status TrainStep(int64_t step);
  absl::StatusOr<std::string> SaveCheckpoint(int64_t step);
  absl::StatusOr<std::string> Publish();
  std::string Fingerprint() const;
  model::AdapterChoice Adapter() const {
    return lora_ ? model::AdapterChoice(&*lora_) : model::AdapterChoice();
  }
  bool StopRequested() const {
    return options_.stop_requested && options_.stop_requested->load(std::memory_order_relaxed);
  }

  const WorkerSpec& spec_;
  const WorkerRunOptions& options_;
  const WorkerHyperparameters& h_ = spec_.hyper;
  std::string base_model_id_;
  at::Device device_ = at::kCPU;
  std::optional<model::Decoder> decoder_;
  std::optional<text::ChatTokenizer> chat_;
  std::optional<Dataset> train_, valid_;
  std::optional<model::LoraAdapter> lora_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<AdamW> optimizer_;
  std::optional<Checkpoint> resume_;
  std::unique_ptr<Collectives> coll_;
  // The ranks' parts of the training set are consecutive ranges of one
  // global example list (as the dataset service splits them): this rank
  // holds [part_begin_, part_begin_ + train_->size()) of global_n_.
  int64_t global_n_ = 0, part_begin_ = 0;
  bool AnyStopRequested();
  absl::Status SyncedBackward(const at::Tensor& loss);
  absl::Status SumOverRanks(std::vector<double>& values);
  int64_t per_rank_batch_ = 0, steps_per_epoch_ = 0, total_steps_ = 0;
  TrainerState state_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  // Figures of the last step and the run.
  double last_loss_ = NAN, last_accuracy_ = NAN;
  int64_t step_real_tokens_ = 0;
  int64_t real_tokens_ = 0, slots_ = 0;
  std::optional<EvalResult> last_eval_;
  int64_t estimated_memory_bytes_ = 0;
  int64_t EstimateMemoryBytes() const;
};

// Per rank, before the run: weights, then 4 fp32 copies of the trainable
// parameters (LoRA: the parameters; both: gradients and AdamW's two
// moments), then the activations autograd keeps for one micro-batch of
// max_sequence_length rows (per layer and token: ~16 hidden-sized and 6
// intermediate-sized fp32 tensors, plus the heads' T attention weights).
int64_t Run::EstimateMemoryBytes() const {
  const model::ModelConfig& c = decoder_->config();
  int64_t trainable = 0;
  for (const at::Tensor& p : params_) trainable += p.numel();
  const int64_t weights = decoder_->WeightBytes() + c.vocab_size * c.hidden_size * 4;
  const int64_t state = trainable * 4 * (lora_ ? 4 : 3);
  const int64_t rows = h_.micro_batch_size > 0 ? h_.micro_batch_size : per_rank_batch_;
  const int64_t tokens = rows * h_.max_sequence_length;
  const int64_t per_token = c.num_hidden_layers *
                            (16 * c.hidden_size + 6 * c.intermediate_size +
                             2 * c.num_attention_heads * h_.max_sequence_length) * 4;
  return weights + state + tokens * per_token;
}

absl::Status Run::Load() {
  if (!fs::is_directory(spec_.base_model_dir)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "base_model_dir: base model directory ", spec_.base_model_dir, " does not exist"));
  }
  if (!fs::exists(fs::path(spec_.base_model_dir) / "config.json")) {
    return absl::InvalidArgumentError(absl::StrCat("base_model_dir: ", spec_.base_model_dir,
                                                   " has no config.json (not a model directory)"));
  }
  base_model_id_ = spec_.base_model_id.empty()
                       ? fs::path(spec_.base_model_dir).lexically_normal().filename().string()
                       : spec_.base_model_id;
  if (base_model_id_.empty())
    base_model_id_ = fs::path(spec_.base_model_dir).lexically_normal().parent_path().filename().string();
  TF_RETURN_IF_ERROR(CatchTorch("device", [&]() -> absl::Status {
    device_ = at::Device(spec_.device);
    if (device_.is_cuda() && !at::hasCUDA())
      return absl::FailedPreconditionError(absl::StrCat("device ", spec_.device, ": no CUDA in this build or machine"));
    return absl::OkStatus();
  }));
  model::DecoderOptions dopts;
  dopts.device = device_;
  dopts.dtype = at::kFloat;
  absl::StatusOr<model::Decoder> d = model::Decoder::Load(spec_.base_model_dir, dopts);
  if (!d.ok()) {
    return absl::Status(d.status().code(), absl::StrCat("base model ", spec_.base_model_dir, ": ",
                                                        d.status().message()));
  }
  decoder_ = *std::move(d);
  std::optional<int64_t> tokenizer_vocab;
  if (fs::exists(fs::path(spec_.base_model_dir) / "tokenizer.json")) {
    absl::StatusOr<text::ChatTokenizer> chat = text::ChatTokenizer::Load(spec_.base_model_dir);
    if (chat.ok()) {
      tokenizer_vocab = chat->tokenizer().vocab_size();
      chat_ = *std::move(chat);
    } else {
      Log(absl::StrCat("tokenizer of ", spec_.base_model_dir, " not loaded (",
                       chat.status().message(), "); shard vocabularies are checked against the model only"));
    }
  }
  const int64_t vocab = decoder_->config().vocab_size;
  absl::StatusOr<Dataset> train = Dataset::Load(spec_.train_shards, "train_shards",
                                                h_.max_sequence_length, vocab, tokenizer_vocab);
  if (!train.ok()) return train.status();
  train_ = *std::move(train);
  if (!spec_.valid_shards.empty()) {
    absl::StatusOr<Dataset> valid = Dataset::Load(spec_.valid_shards, "valid_shards",
                                                  h_.max_sequence_length, vocab, tokenizer_vocab);
    if (!valid.ok()) return valid.status();
    valid_ = *std::move(valid);
  }
  return absl::OkStatus();
}

std::string Run::Fingerprint() const {
  json j = json::parse(WorkerSpecToJson(spec_));
  json f = {{"method", j["method"]},        {"task", j["task"]},
            {"world_size", j["world_size"]}, {"hyperparameters", j["hyperparameters"]},
            {"train_examples", train_->size()}, {"train_tokens", train_->total_tokens()},
            {"train_trained", train_->total_trained()}};
  for (const char* k : {"eval_interval_steps", "checkpoint_interval_steps", "keep_checkpoints"})
    f["hyperparameters"].erase(k);
  return Sha256Hex(f.dump());
}

absl::Status Run::Setup() {
  if (spec_.task != TrainingTask::kChat) {
    return absl::UnimplementedError(
        absl::StrCat("task ", TaskName(spec_.task), ": not implemented by this worker yet"));
  }
  TF_ASSIGN_OR_RETURN(coll_, JoinProcessGroup(spec_));
  {
    std::vector<double> sizes(static_cast<size_t>(spec_.world_size), 0.0);
    sizes[static_cast<size_t>(spec_.rank)] = static_cast<double>(train_->size());
    TF_RETURN_IF_ERROR(SumOverRanks(sizes));
    for (int64_t r = 0; r < spec_.world_size; ++r) {
      if (r < spec_.rank) part_begin_ += static_cast<int64_t>(sizes[r]);
      global_n_ += static_cast<int64_t>(sizes[r]);
    }
  }
  per_rank_batch_ = h_.batch_size / spec_.world_size;
  steps_per_epoch_ = (global_n_ + h_.batch_size - 1) / h_.batch_size;
  total_steps_ = steps_per_epoch_ * h_.epochs;
  if (h_.max_steps > 0) total_steps_ = std::min(total_steps_, h_.max_steps);
  state_.total_steps = total_steps_;
  state_.steps_per_epoch = steps_per_epoch_;
  state_.fingerprint = Fingerprint();

  if (!spec_.resume_from.empty()) {
    absl::StatusOr<Checkpoint> c = ReadCheckpoint(spec_.resume_from, decoder_->config());
    if (!c.ok()) {
      return absl::Status(c.status().code(), absl::StrCat("resume_from: ", c.status().message()));
    }
    if (c->state.fingerprint != state_.fingerprint) {
      return absl::InvalidArgumentError(absl::StrCat(
          "resume_from: checkpoint ", spec_.resume_from,
          " was written by a run with other data or hyperparameters (fingerprint mismatch)"));
    }
    if ((spec_.method == TrainingMethod::kLora) != c->adapter.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("resume_from: checkpoint ", spec_.resume_from,
                                                     " is not a ", MethodName(spec_.method),
                                                     " checkpoint"));
    }
    resume_ = *std::move(c);
  }

  return CatchTorch("setting up training", [&]() -> absl::Status {
    if (spec_.method == TrainingMethod::kLora) {
      if (resume_) {
        lora_ = std::move(*resume_->adapter);
      } else if (!spec_.init_adapter_dir.empty()) {
        absl::StatusOr<model::LoraAdapter> a =
            model::LoraAdapter::Load(spec_.init_adapter_dir, decoder_->config(), device_);
        if (!a.ok()) {
          return absl::Status(a.status().code(),
                              absl::StrCat("init_adapter_dir: ", a.status().message()));
        }
        lora_ = *std::move(a);
      } else {
        model::LoraConfig lc;
        lc.rank = h_.lora_rank;
        lc.alpha = h_.lora_alpha;
        lc.dropout = h_.lora_dropout;
        lc.target_modules = h_.lora_target_modules;
        absl::StatusOr<model::LoraAdapter> a = model::LoraAdapter::Create(
            decoder_->config(), lc, static_cast<uint64_t>(h_.seed), device_);
        if (!a.ok()) {
          return absl::Status(a.status().code(),
                              absl::StrCat("hyperparameters.lora_*: ", a.status().message()));
        }
        lora_ = *std::move(a);
      }
      params_ = lora_->Parameters();
      for (at::Tensor& p : params_) p.set_requires_grad(true);
    } else {
      params_ = decoder_->Parameters();
      at::NoGradGuard no_grad;
      if (resume_) {
        if (resume_->weights.size() != params_.size())
          return absl::InvalidArgumentError(absl::StrCat("resume_from: checkpoint ", spec_.resume_from,
                                                         " holds ", resume_->weights.size(),
                                                         " weights for ", params_.size()));
        for (size_t i = 0; i < params_.size(); ++i) {
          if (resume_->weights[i].second.sizes() != params_[i].sizes())
            return absl::InvalidArgumentError(absl::StrCat("resume_from: weight ", i, " mis-shaped"));
          params_[i].copy_(resume_->weights[i].second);
        }
      }
      for (at::Tensor& p : params_) p.set_requires_grad(true);
    }
    estimated_memory_bytes_ = EstimateMemoryBytes();
    TF_RETURN_IF_ERROR(coll_->AttachGradients(params_));
    AdamWOptions ao;
    ao.weight_decay = h_.weight_decay;
    optimizer_ = std::make_unique<AdamW>(params_, ao);
    if (resume_) {
      TF_RETURN_IF_ERROR(optimizer_->LoadState(resume_->optimizer, resume_->state.step));
      state_.step = resume_->state.step;
      state_.trained_tokens = resume_->state.trained_tokens;
      state_.base_valid_loss = resume_->state.base_valid_loss;
      state_.base_valid_accuracy = resume_->state.base_valid_accuracy;
      state_.train_loss = resume_->state.train_loss;
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<EvalResult> Run::Evaluate(const model::LoraAdapter* adapter) {
  return CatchTorch("evaluation", [&]() -> absl::StatusOr<EvalResult> {
    at::NoGradGuard no_grad;
    EvalResult r;
    double loss_sum = 0;
    int64_t correct = 0;
    const int64_t chunk = h_.micro_batch_size > 0 ? h_.micro_batch_size : per_rank_batch_;
    for (int64_t i = 0; i < valid_->size(); i += chunk) {
      std::vector<int64_t> idx;
      for (int64_t k = i; k < std::min(valid_->size(), i + chunk); ++k) idx.push_back(k);
      MicroBatch mb = MakeMicroBatch(*valid_, idx, h_.packing, h_.max_sequence_length);
      model::ForwardOptions fo;
      fo.sequence_ids = mb.sequence_ids;
      fo.attention_mask = mb.attention_mask;
      fo.adapter = model::AdapterChoice(adapter);
      TF_ASSIGN_OR_RETURN(model::Decoder::LossOutput out, decoder_->Loss(mb.input_ids, mb.labels, fo));
      if (out.tokens == 0) continue;
      loss_sum += out.loss.item<double>() * static_cast<double>(out.tokens);
      correct += out.correct;
      r.tokens += out.tokens;
    }
    if (spec_.world_size > 1) {
      std::vector<double> v = {loss_sum, static_cast<double>(correct), static_cast<double>(r.tokens)};
      TF_RETURN_IF_ERROR(SumOverRanks(v));
      loss_sum = v[0];
      correct = static_cast<int64_t>(v[1]);
      r.tokens = static_cast<int64_t>(v[2]);
    }
    if (r.tokens > 0) {
      r.loss = loss_sum / static_cast<double>(r.tokens);
      r.accuracy = static_cast<double>(correct) / static_cast<double>(r.tokens);
    } else {
      r.loss = NAN;
      r.accuracy = NAN;
    }
    return r;
  });
}

absl::Status Run::TrainStep(int64_t step) {
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t in_epoch = step % steps_per_epoch_;
  if (order_epoch_ != epoch) {
    order_ = EpochOrder(global_n_, static_cast<uint64_t>(h_.seed), epoch);
    order_epoch_ = epoch;
  }
  // The global batch, and the members of it that this rank holds.
  const int64_t begin = in_epoch * h_.batch_size;
  const int64_t end = std::min<int64_t>(global_n_, begin + h_.batch_size);
  std::vector<int64_t> examples;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t g = order_[static_cast<size_t>(i)];
    if (g >= part_begin_ && g < part_begin_ + train_->size()) examples.push_back(g - part_begin_);
  }
  int64_t step_trained = 0;
  for (int64_t e : examples) step_trained += train_->at(e).trained;
  if (spec_.world_size > 1) {
    std::vector<double> v = {static_cast<double>(step_trained)};
    TF_RETURN_IF_ERROR(SumOverRanks(v));
    step_trained = static_cast<int64_t>(v[0]);
  }
  return CatchTorch("training step", [&]() -> absl::Status {
    // Dropout draws depend on (seed, step) only, so a resumed run draws the same.
    at::manual_seed(static_cast<uint64_t>(h_.seed) * 1000003ull + static_cast<uint64_t>(step));
    for (at::Tensor& p : params_) p.mutable_grad() = at::Tensor();
    double loss_sum = 0;
    int64_t correct = 0, tokens = 0;
    step_real_tokens_ = 0;
    const std::vector<std::vector<int64_t>> micros =
        SplitMicroBatches(*train_, examples, h_.micro_batch_size, h_.packing);
    // With several ranks the Reducer reduces the last backward of the step
    // (which carries the accumulated gradients) and averages over ranks, so
    // each rank's loss carries world_size.
    const bool ddp = spec_.world_size > 1;
    const double world = static_cast<double>(spec_.world_size);
    int64_t last_backward = -1;
    for (size_t i = 0; i < micros.size(); ++i) {
      int64_t t = 0;
      for (int64_t e : micros[i]) t += train_->at(e).trained;
      if (t > 0) last_backward = static_cast<int64_t>(i);
    }
    for (size_t i = 0; i < micros.size(); ++i) {
      MicroBatch mb = MakeMicroBatch(*train_, micros[i], h_.packing, h_.max_sequence_length);
      real_tokens_ += mb.real_tokens;
      slots_ += mb.slots;
      step_real_tokens_ += mb.real_tokens;
      if (mb.trained_tokens == 0) continue;
      model::ForwardOptions fo;
      fo.sequence_ids = mb.sequence_ids;
      fo.attention_mask = mb.attention_mask;
      fo.adapter = Adapter();
      fo.training = true;
      TF_ASSIGN_OR_RETURN(model::Decoder::LossOutput out, decoder_->Loss(mb.input_ids, mb.labels, fo));
      // Normalised by the trained tokens of the whole step, not per micro-batch.
      double scale = static_cast<double>(out.tokens) / static_cast<double>(step_trained);
      if (ddp) scale *= world;
      at::Tensor scaled = out.loss * scale;
      if (ddp && static_cast<int64_t>(i) == last_backward) {
        TF_RETURN_IF_ERROR(coll_->PrepareSyncedBackward(scaled));
        TF_RETURN_IF_ERROR(SyncedBackward(scaled));
      } else {
        scaled.backward();
      }
      loss_sum += out.loss.item<double>() * static_cast<double>(out.tokens);
      correct += out.correct;
      tokens += out.tokens;
    }
    if (ddp) {
      if (last_backward < 0) {
        // Nothing of this step on this rank: a zero backward still joins
        // the reduction.
        at::Tensor zero = at::zeros({}, params_[0].options());
        for (const at::Tensor& p : params_) zero = zero + p.sum() * 0.0;
        TF_RETURN_IF_ERROR(coll_->PrepareSyncedBackward(zero));
        TF_RETURN_IF_ERROR(SyncedBackward(zero));
      }
      std::vector<double> v = {loss_sum, static_cast<double>(correct), static_cast<double>(tokens)};
      TF_RETURN_IF_ERROR(SumOverRanks(v));
      loss_sum = v[0];
      correct = static_cast<int64_t>(v[1]);
      tokens = static_cast<int64_t>(v[2]);
    }
    ClipGradNorm(params_, h_.max_grad_norm);
    optimizer_->Step(ScheduledLearningRate(h_, step, total_steps_));
    last_loss_ = tokens > 0 ? loss_sum / static_cast<double>(tokens) : NAN;
    last_accuracy_ = tokens > 0 ? static_cast<double>(correct) / static_cast<double>(tokens) : NAN;
    if (!std::isfinite(last_loss_) && tokens > 0) {
      return absl::InternalError(absl::StrCat("step ", step + 1, ": the loss is not finite (diverged)"));
    }
    state_.trained_tokens += step_trained;
    state_.step = step + 1;
    if (std::isfinite(last_loss_)) state_.train_loss = last_loss_;
    return absl::OkStatus();
  });
}

absl::StatusOr<std::string> Run::SaveCheckpoint(int64_t step) {
  state_.step = step;
  state_.epoch = step / steps_per_epoch_;
  state_.step_in_epoch = step % steps_per_epoch_;
  if (spec_.rank != 0) {
    // Rank 0 writes; the others name the same directory.
    return (fs::absolute(spec_.checkpoint_root) / CheckpointDirName(step)).lexically_normal().string();
  }
  model::NamedTensors weights;
  if (!lora_) {
    for (size_t i = 0; i < params_.size(); ++i)
      weights.emplace_back(absl::StrCat("param.", i), params_[i].detach());
  }
  TF_ASSIGN_OR_RETURN(std::string dir,
                      WriteCheckpoint(spec_.checkpoint_root, state_, lora_ ? &*lora_ : nullptr,
                                      weights, optimizer_->State(), base_model_id_,
                                      h_.keep_checkpoints));
  ReportEvent e;
  e.kind = ReportKind::kCheckpoint;
  e.step = step;
  e.epoch = static_cast<double>(step) / static_cast<double>(steps_per_epoch_);
  e.checkpoint_dir = fs::absolute(dir).string();
  if (state_.train_loss) e.metrics["train_loss"] = *state_.train_loss;
  if (std::isfinite(last_accuracy_)) e.metrics["train_token_accuracy"] = last_accuracy_;
  if (last_eval_) {
    e.metrics["valid_loss"] = last_eval_->loss;
    e.metrics["valid_token_accuracy"] = last_eval_->accuracy;
  }
  e.metrics["trained_tokens"] = static_cast<double>(state_.trained_tokens);
  Report(options_, e);
  return e.checkpoint_dir;
}

absl::StatusOr<std::string> Run::Publish() {
  const std::string out = fs::absolute(spec_.output_dir).lexically_normal().string();
  if (spec_.rank != 0) return out;
  const std::string tmp = absl::StrCat(out, ".tmp-", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("output_dir ", tmp, ": ", ec.message()));
  if (lora_) {
    TF_RETURN_IF_ERROR(lora_->Save(tmp, base_model_id_));
  } else {
    model::SaveOptions so;
    so.copy_files_from = spec_.base_model_dir;
    TF_RETURN_IF_ERROR(model::SaveHfModel(*decoder_, tmp, nullptr, so));
  }
  // The train-to-serve contract: what serving must pair this result with.
  json c;
  c["format_version"] = 1;
  c["job_id"] = spec_.job_id;
  c["base_model_id"] = base_model_id_;
  c["method"] = MethodName(spec_.method);
  c["task"] = TaskName(spec_.task);
  TF_ASSIGN_OR_RETURN(c["base_config_sha256"],
                      FileSha256Hex((fs::path(spec_.base_model_dir) / "config.json").string()));
  for (const char* f : {"tokenizer.json", "tokenizer.model"}) {
    fs::path p = fs::path(spec_.base_model_dir) / f;
    if (fs::exists(p)) {
      TF_ASSIGN_OR_RETURN(std::string h, FileSha256Hex(p.string()));
      c["tokenizer_sha256"] = h;
      c["tokenizer_file"] = f;
      break;
    }
  }
  std::vector<int64_t> stops;
  if (chat_) {
    c["chat_template"] = ChatFormatName(chat_->chat_template().format());
    for (int32_t id : chat_->StopIds()) stops.push_back(id);
  }
  for (int64_t id : decoder_->config().eos_token_ids)
    if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
  c["stop_token_ids"] = stops;
  json gen = json::object();
  absl::StatusOr<std::string> gc =
      model::ReadFileToString((fs::path(spec_.base_model_dir) / "generation_config.json").string());
  if (gc.ok()) {
    json g = json::parse(*gc, nullptr, false);
    if (g.is_object()) gen = g;
  }
  gen["max_sequence_length"] = h_.max_sequence_length;
  c["generation_defaults"] = gen;
  if (lora_) {
    c["lora"] = {{"rank", lora_->config().rank},
                 {"alpha", lora_->config().alpha},
                 {"target_modules", lora_->config().target_modules}};
  }
  c["trained_tokens"] = state_.trained_tokens;
  c["steps"] = state_.step;
  if (last_eval_ && std::isfinite(last_eval_->loss)) c["valid_loss"] = last_eval_->loss;
  if (state_.base_valid_loss) c["base_valid_loss"] = *state_.base_valid_loss;
  TF_RETURN_IF_ERROR(model::WriteStringAtomically((fs::path(tmp) / "tunefleet_contract.json").string(),
                                                  c.dump(2) + "\n"));
  fs::remove_all(out, ec);
  fs::rename(tmp, out, ec);
  if (ec) return absl::InternalError(absl::StrCat("output_dir ", out, ": ", ec.message()));
  return out;
}

// The Reducer waits for its all-reduces inside backward: a peer that hangs
// or dies surfaces there, and is the peers' failure, not ours.
absl::Status Run::SyncedBackward(const at::Tensor& loss) {
  try {
    loss.backward();
    return absl::OkStatus();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("backward: out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::UnavailableError(
        absl::StrCat("gradient all-reduce with the other ranks: ", e.what_without_backtrace()));
  }
}

bool Run::AnyStopRequested() {
  if (spec_.world_size == 1) return StopRequested();
  // A stop on any rank stops all at the same step.
  std::vector<double> v = {StopRequested() ? 1.0 : 0.0};
  if (!SumOverRanks(v).ok()) return true;
  return v[0] > 0;
}

absl::Status Run::SumOverRanks(std::vector<double>& values) {
  if (spec_.world_size == 1) return absl::OkStatus();
  at::Tensor t = at::tensor(values, at::kDouble);
  TF_RETURN_IF_ERROR(coll_->AllReduceSum(t));
  for (size_t i = 0; i < values.size(); ++i) values[i] = t[static_cast<int64_t>(i)].item<double>();
  return absl::OkStatus();
}

absl::StatusOr<WorkerOutcome> Run::Go() {
  TF_RETURN_IF_ERROR(ValidateWorkerSpec(spec_));
  TF_RETURN_IF_ERROR(Load());
  TF_RETURN_IF_ERROR(Setup());
  const int64_t start = state_.step;
  {
    ReportEvent e;
    e.kind = ReportKind::kStarted;
    e.total_steps = total_steps_;
    e.world_size = spec_.world_size;
    e.rank = spec_.rank;
    e.resumed_step = start;
    Report(options_, e);
  }
  Log(absl::StrCat("job=", spec_.job_id, " examples=", train_->size(), " steps=", total_steps_,
                   " start=", start));
  if (valid_ && !resume_) {
    // The base (adapter off; before any update for full) on the same data.
    TF_ASSIGN_OR_RETURN(EvalResult base, Evaluate(nullptr));
    state_.base_valid_loss = base.loss;
    state_.base_valid_accuracy = base.accuracy;
  }
  auto eval = [&](int64_t step) -> absl::Status {
    if (!valid_) return absl::OkStatus();
    TF_ASSIGN_OR_RETURN(EvalResult r, Evaluate(lora_ ? &*lora_ : nullptr));
    last_eval_ = r;
    ReportEvent e;
    e.kind = ReportKind::kEval;
    e.step = step;
    e.epoch = static_cast<double>(step) / static_cast<double>(steps_per_epoch_);
    e.valid_loss = r.loss;
    e.valid_token_accuracy = r.accuracy;
    Report(options_, e);
    return absl::OkStatus();
  };
  Clock::time_point last_report = Clock::now();
  const Clock::time_point run_start = Clock::now();
  int64_t tokens_since = 0;
  std::string last_checkpoint;
  int64_t last_checkpoint_step = -1;
  bool stop = false;
  for (int64_t step = start; step < total_steps_; ++step) {
    stop = AnyStopRequested();
    if (stop) break;
    TF_RETURN_IF_ERROR(TrainStep(step));
    const int64_t done = step + 1;
    tokens_since += step_real_tokens_;
    const Clock::time_point now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_report).count();
    if (since >= spec_.progress_interval_s || done == total_steps_) {
      ReportEvent e;
      e.kind = ReportKind::kProgress;
      e.step = done;
      e.total_steps = total_steps_;
      e.epoch = static_cast<double>(done) / static_cast<double>(steps_per_epoch_);
      if (std::isfinite(last_loss_)) e.train_loss = last_loss_;
      if (std::isfinite(last_accuracy_)) e.train_token_accuracy = last_accuracy_;
      e.learning_rate = ScheduledLearningRate(h_, step, total_steps_);
      if (since > 0) e.tokens_per_second = static_cast<double>(tokens_since) / since;
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      e.eta_seconds = elapsed / static_cast<double>(done - start) * static_cast<double>(total_steps_ - done);
      e.trained_tokens = state_.trained_tokens;
      Report(options_, e);
      last_report = now;
      tokens_since = 0;
    }
    const bool epoch_end = done % steps_per_epoch_ == 0;
    if (epoch_end || (h_.eval_interval_steps > 0 && done % h_.eval_interval_steps == 0) ||
        done == total_steps_) {
      TF_RETURN_IF_ERROR(eval(done));
    }
    if (epoch_end || (h_.checkpoint_interval_steps > 0 && done % h_.checkpoint_interval_steps == 0)) {
      TF_ASSIGN_OR_RETURN(last_checkpoint, SaveCheckpoint(done));
      last_checkpoint_step = done;
    }
  }
  if (stop) {
    if (last_checkpoint_step != state_.step) {
      TF_ASSIGN_OR_RETURN(last_checkpoint, SaveCheckpoint(state_.step));
    }
    TF_RETURN_IF_ERROR(coll_->Barrier());
    ReportEvent e;
    e.kind = ReportKind::kStopped;
    e.step = state_.step;
    e.checkpoint_dir = last_checkpoint;
    Report(options_, e);
    Log(absl::StrCat("job=", spec_.job_id, " stopped at step ", state_.step));
    return WorkerOutcome{true, last_checkpoint};
  }
  TF_ASSIGN_OR_RETURN(std::string result, Publish());
  TF_RETURN_IF_ERROR(coll_->Barrier());  // the result exists before any rank says so
  ReportEvent e;
  e.kind = ReportKind::kCompleted;
  e.step = state_.step;
  e.result_dir = result;
  e.trained_tokens = state_.trained_tokens;
  if (last_eval_) {
    e.valid_loss = last_eval_->loss;
    e.valid_token_accuracy = last_eval_->accuracy;
  }
  e.base_valid_loss = state_.base_valid_loss;
  if (state_.base_valid_accuracy) e.metrics["base_valid_token_accuracy"] = *state_.base_valid_accuracy;
  if (slots_ > 0) e.metrics["padding_fraction"] = 1.0 - static_cast<double>(real_tokens_) / static_cast<double>(slots_);
  if (state_.train_loss) e.metrics["train_loss"] = *state_.train_loss;
  e.metrics["estimated_memory_bytes"] = static_cast<double>(estimated_memory_bytes_);
  rusage ru = {};
  if (::getrusage(RUSAGE_SELF, &ru) == 0)
    e.metrics["peak_rss_bytes"] = static_cast<double>(ru.ru_maxrss) * 1024.0;
  Report(options_, e);
  return WorkerOutcome{false, result};
}

}  // namespace

absl::StatusOr<WorkerOutcome> RunWorker(const WorkerSpec& spec, const WorkerRunOptions& options) {
  Run run(spec, options);
  return CatchTorch("train worker", [&]() { return run.Go(); });
}

}  // namespace tunefleet::trainer
