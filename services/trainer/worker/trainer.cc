#include "services/trainer/worker/trainer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <map>
#include <new>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/base/status_macros.h"
#include "common/model/decoder.h"
#include "common/model/file_util.h"
#include "common/model/lora.h"
#include "common/model/memory_estimate.h"
#include "common/model/torch_status.h"
#include "common/text/chat_template.h"
#include "services/trainer/worker/checkpoint.h"
#include "services/trainer/worker/data.h"
#include "services/trainer/worker/device_memory.h"
#include "services/trainer/worker/distributed.h"
#include "services/trainer/worker/dpo.h"
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

// SFT: token-level loss and accuracy over `tokens`. DPO: the pairs' mean
// loss and reward accuracy over `tokens` pairs, plus the mean margin and rewards.
struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t tokens = 0;
  std::map<std::string, double> metrics;
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
  // DPO: the objective, and the reference when it is not the base decoder
  // with the adapter off: the frozen adapter a LoRA job started from, or
  // (full fine-tuning) a second load of the starting weights.
  bool dpo_ = false;
  // Classification: the head (Linear hidden -> num_labels, no bias, as
  // LlamaForSequenceClassification's score.weight) on the last token's final
  // hidden state; trained beside the adapter (or the weights).
  bool classify_ = false;
  at::Tensor head_;  // [num_labels, hidden] fp32
  // Logits [R, num_labels] of a micro-batch's rows.
  absl::StatusOr<at::Tensor> ClassLogits(const MicroBatch& mb, const model::ForwardOptions& fo) const;
  // fp32 on the CPU; on CUDA bf16 autocast, with the weights that `trained`
  // says are not updated stored in bf16.
  model::DecoderOptions DecoderOptionsFor(bool trained) const;
  model::NamedTensors HeadWeights() const;  // LoRA checkpoints: {"score.weight"}
  absl::StatusOr<EvalResult> EvaluateClassification(const model::LoraAdapter* adapter);
  std::optional<model::LoraAdapter> reference_adapter_;
  std::optional<model::Decoder> reference_decoder_;
  DpoModels Dpo(const model::LoraAdapter* policy_adapter) const;
  // Training units: examples, or preference pairs for DPO.
  int64_t Units(const Dataset& d) const { return dpo_ ? d.size() / 2 : d.size(); }
  int64_t UnitTrained(const Dataset& d, int64_t u) const {
    return dpo_ ? d.at(2 * u).trained + d.at(2 * u + 1).trained : d.at(u).trained;
  }
  // Early stopping after an evaluation: true when the run should stop.
  absl::StatusOr<bool> TrackBest(int64_t step, const EvalResult& r);
  absl::Status RestoreBest();
  bool stopped_early_ = false;
  std::optional<EvalResult> best_eval_;  // this process's view of the best evaluation
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
  // Several ranks: the tokens of a global batch's units on every rank.
  absl::StatusOr<Dataset> GatherBatch(const std::vector<int64_t>& units);
  int64_t per_rank_batch_ = 0, steps_per_epoch_ = 0, total_steps_ = 0;
  TrainerState state_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  // Figures of the last step and the run.
  double last_loss_ = NAN, last_accuracy_ = NAN;
  std::map<std::string, double> last_metrics_;  // DPO: reward margin, rewards
  int64_t step_real_tokens_ = 0;
  int64_t real_tokens_ = 0, slots_ = 0;
  std::optional<EvalResult> last_eval_;
  int64_t estimated_memory_bytes_ = 0;
  int64_t EstimateMemoryBytes() const;
  // On CUDA: the most bytes in use on the device, sampled after each step.
  int64_t peak_device_bytes_ = 0;
  void SampleDeviceMemory();
  // What the process held before it loaded the model (its libraries; on
  // CUDA the context, created first): part of the measured peak that the
  // estimate leaves out.
  int64_t runtime_bytes_ = 0;
};

// Per rank, before the run, by the scheduler's formula
// (common/model/memory_estimate.h) for this run's adapter, micro-batch and
// precision (bf16 autocast on CUDA, fp32 on the CPU): the figure the user saw
// at admission, reported beside what the run really used.
int64_t Run::EstimateMemoryBytes() const {
  model::TrainingMemoryInput in;
  in.full = !lora_.has_value();
  if (lora_) {
    in.lora_rank = lora_->config().rank;
    in.lora_targets = lora_->config().target_modules;
  }
  in.precision = device_.is_cuda() ? model::TrainingPrecision::kBf16Autocast
                                   : model::TrainingPrecision::kFp32;
  in.micro_batch_size = h_.micro_batch_size > 0 ? h_.micro_batch_size : per_rank_batch_;
  in.sequence_length = h_.max_sequence_length;
  in.gradient_checkpointing = h_.gradient_checkpointing;
  in.dpo = dpo_;
  in.num_labels = classify_ ? spec_.num_labels : 0;
  for (int64_t i = 0; train_ && i < train_->size(); ++i)
    in.longest_example = std::max(in.longest_example, train_->at(i).length);
  return model::EstimateTrainingMemory(decoder_->config(), in).total();
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
    if (device_.is_cuda()) {
      (void)at::empty({1}, at::TensorOptions().device(device_));  // the context, now
      if (std::optional<int64_t> b = CudaBytesInUse(device_.has_index() ? device_.index() : 0))
        runtime_bytes_ = *b;
    } else if (std::optional<int64_t> b = ResidentBytes()) {
      runtime_bytes_ = *b;
    }
    return absl::OkStatus();
  }));
  absl::StatusOr<model::Decoder> d = model::Decoder::Load(
      spec_.base_model_dir, DecoderOptionsFor(/*trained=*/spec_.method != TrainingMethod::kLora));
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
  // What does not change the numbers may change on a resume.
  for (const char* k : {"eval_interval_steps", "checkpoint_interval_steps", "keep_checkpoints",
                        "gradient_checkpointing"})
    f["hyperparameters"].erase(k);
  if (classify_) {
    f["num_labels"] = spec_.num_labels;
    f["label_names"] = spec_.label_names;
  }
  if (dpo_) {  // SFT fingerprints stay as older workers wrote them
    f["objective"] = "dpo";
    f["dpo_beta"] = spec_.dpo_beta;
  }
  return Sha256Hex(f.dump());
}

absl::Status Run::Setup() {
  dpo_ = spec_.objective == TrainingObjective::kDpo;
  classify_ = spec_.task == TrainingTask::kClassification;
  if (classify_) {
    // Every example needs a class below num_labels (the agent maps a
    // validation file's labels to the training file's names).
    const std::pair<const std::optional<Dataset>*, const char*> labelled[] = {
        {&train_, "train_shards"}, {&valid_, "valid_shards"}};
    for (const auto& [data, what] : labelled) {
      if (!data->has_value()) continue;
      for (int64_t i = 0; i < (*data)->size(); ++i) {
        const int32_t label = (*data)->at(i).label;
        if (label < 0 || label >= spec_.num_labels) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, ": example ", i, " has label ", label, ", outside the ", spec_.num_labels,
              " classes of num_labels (classification needs the shards of a classification file)"));
        }
      }
    }
  }
  const std::pair<const std::optional<Dataset>*, const char*> sets[] = {
      {&train_, "train_shards"}, {&valid_, "valid_shards"}};
  for (const auto& [data, what] : sets) {
    if (!data->has_value()) continue;
    if (dpo_ && !(*data)->pairs()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": objective dpo needs preference pairs (the shards of a preference file)"));
    }
    if (!dpo_ && (*data)->pairs()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": the shards hold preference pairs, which train with objective dpo, not ",
          ObjectiveName(spec_.objective)));
    }
  }
  TF_ASSIGN_OR_RETURN(coll_, JoinProcessGroup(spec_));
  {
    std::vector<double> sizes(static_cast<size_t>(spec_.world_size), 0.0);
    sizes[static_cast<size_t>(spec_.rank)] = static_cast<double>(Units(*train_));
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
      if (classify_) {
        head_ = at::zeros({spec_.num_labels, decoder_->config().hidden_size},
                          at::TensorOptions().dtype(at::kFloat).device(device_));
        if (resume_) {
          bool found = false;
          for (const auto& [name, t] : resume_->weights) {
            if (name != "score.weight") continue;
            if (t.sizes() != head_.sizes())
              return absl::InvalidArgumentError(absl::StrCat("resume_from: score.weight mis-shaped"));
            head_.copy_(t);
            found = true;
          }
          if (!found)
            return absl::InvalidArgumentError(absl::StrCat(
                "resume_from: checkpoint ", spec_.resume_from, " has no classification head"));
        }
        params_.push_back(head_);
      }
      for (at::Tensor& p : params_) p.set_requires_grad(true);
      if (dpo_ && !spec_.init_adapter_dir.empty()) {
        // The reference is the model the job started from: a frozen copy of
        // its adapter (small), not the bare base.
        absl::StatusOr<model::LoraAdapter> a =
            model::LoraAdapter::Load(spec_.init_adapter_dir, decoder_->config(), device_);
        if (!a.ok()) {
          return absl::Status(a.status().code(),
                              absl::StrCat("init_adapter_dir: ", a.status().message()));
        }
        reference_adapter_ = *std::move(a);
      }
    } else {
      if (dpo_) {
        // Full fine-tuning updates the weights in place: the reference is
        // a second load of the starting ones.
        absl::StatusOr<model::Decoder> ref =
            model::Decoder::Load(spec_.base_model_dir, DecoderOptionsFor(/*trained=*/false));
        if (!ref.ok()) return ref.status();
        reference_decoder_ = *std::move(ref);
      }
      params_ = decoder_->Parameters();
      if (classify_) {  // the last parameter (param.N in checkpoints)
        head_ = at::zeros({spec_.num_labels, decoder_->config().hidden_size},
                          at::TensorOptions().dtype(at::kFloat).device(device_));
        params_.push_back(head_);
      }
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
      state_.best_valid_loss = resume_->state.best_valid_loss;
      state_.best_step = resume_->state.best_step;
      state_.evals_since_best = resume_->state.evals_since_best;
    }
    return absl::OkStatus();
  });
}

DpoModels Run::Dpo(const model::LoraAdapter* policy_adapter) const {
  DpoModels m;
  m.policy = &*decoder_;
  m.policy_adapter = model::AdapterChoice(policy_adapter);
  m.reference = reference_decoder_ ? &*reference_decoder_ : &*decoder_;
  m.reference_adapter =
      model::AdapterChoice(reference_adapter_ ? &*reference_adapter_ : nullptr);
  m.beta = spec_.dpo_beta;
  return m;
}

absl::StatusOr<at::Tensor> Run::ClassLogits(const MicroBatch& mb,
                                            const model::ForwardOptions& fo) const {
  TF_ASSIGN_OR_RETURN(at::Tensor h, decoder_->ForwardHidden(mb.input_ids.to(device_), fo));
  const int64_t rows = h.size(0), T = h.size(1);
  at::Tensor flat = at::arange(rows, at::TensorOptions().dtype(at::kLong).device(device_)) * T +
                    mb.last_index.to(device_);
  at::Tensor last = h.reshape({rows * T, h.size(2)}).index_select(0, flat);  // [R, hidden]
  // Under mixed precision the hidden states are bf16; the head stays fp32.
  return at::matmul(last.to(head_.scalar_type()), head_.t());
}

void Run::SampleDeviceMemory() {
  if (!device_.is_cuda()) return;
  if (std::optional<int64_t> b = CudaBytesInUse(device_.has_index() ? device_.index() : 0))
    peak_device_bytes_ = std::max(peak_device_bytes_, *b);
}

model::DecoderOptions Run::DecoderOptionsFor(bool trained) const {
  model::DecoderOptions o;
  o.device = device_;
  o.dtype = at::kFloat;
  if (device_.is_cuda()) {
    // bf16 products under autocast; weights that are trained stay fp32 (the
    // optimizer's master copy), frozen ones (LoRA's base, DPO's reference)
    // are kept in bf16, half the memory.
    o.autocast_dtype = at::kBFloat16;
    if (!trained) o.dtype = at::kBFloat16;
  }
  return o;
}

model::NamedTensors Run::HeadWeights() const {
  model::NamedTensors w;
  if (classify_ && lora_) w.emplace_back("score.weight", head_.detach());
  return w;
}

// Loss (mean cross entropy), accuracy (examples whose argmax is the label)
// and macro-F1: the mean over classes of 2TP / (2TP + FP + FN), over the
// classes that occur among the labels or the predictions.
absl::StatusOr<EvalResult> Run::EvaluateClassification(const model::LoraAdapter* adapter) {
  return CatchTorch("evaluation", [&]() -> absl::StatusOr<EvalResult> {
    at::NoGradGuard no_grad;
    const int64_t C = spec_.num_labels;
    // loss, correct, examples, then TP, FP, FN per class
    std::vector<double> v(static_cast<size_t>(3 + 3 * C), 0.0);
    const int64_t chunk = h_.micro_batch_size > 0 ? h_.micro_batch_size : per_rank_batch_;
    for (int64_t i = 0; i < valid_->size(); i += chunk) {
      std::vector<int64_t> idx;
      for (int64_t k = i; k < std::min(valid_->size(), i + chunk); ++k) idx.push_back(k);
      MicroBatch mb = MakeMicroBatch(*valid_, idx, false, h_.max_sequence_length, true);
      model::ForwardOptions fo;
      fo.attention_mask = mb.attention_mask;  // on the host: the decoder reads its runs
      fo.adapter = model::AdapterChoice(adapter);
      TF_ASSIGN_OR_RETURN(at::Tensor logits, ClassLogits(mb, fo));
      at::Tensor target = mb.class_labels.to(device_);
      v[0] += at::nll_loss(at::log_softmax(logits, -1), target, {}, at::Reduction::Sum)
                  .item<double>();
      at::Tensor pred = logits.argmax(-1).cpu();
      auto pp = pred.accessor<int64_t, 1>();
      auto pt = mb.class_labels.accessor<int64_t, 1>();
      for (int64_t r = 0; r < pred.size(0); ++r) {
        const int64_t p = pp[r], t = pt[r];
        v[2] += 1;
        if (p == t) {
          v[1] += 1;
          v[static_cast<size_t>(3 + t)] += 1;
        } else {
          v[static_cast<size_t>(3 + C + p)] += 1;
          v[static_cast<size_t>(3 + 2 * C + t)] += 1;
        }
      }
    }
    TF_RETURN_IF_ERROR(SumOverRanks(v));
    EvalResult r;
    r.tokens = static_cast<int64_t>(v[2]);
    r.loss = r.tokens > 0 ? v[0] / v[2] : NAN;
    r.accuracy = r.tokens > 0 ? v[1] / v[2] : NAN;
    double f1_sum = 0;
    int64_t classes = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double tp = v[static_cast<size_t>(3 + c)], fp = v[static_cast<size_t>(3 + C + c)],
                   fn = v[static_cast<size_t>(3 + 2 * C + c)];
      if (tp + fp + fn == 0) continue;
      f1_sum += 2 * tp / (2 * tp + fp + fn);
      ++classes;
    }
    if (classes > 0) r.metrics["macro_f1"] = f1_sum / static_cast<double>(classes);
    return r;
  });
}

absl::StatusOr<EvalResult> Run::Evaluate(const model::LoraAdapter* adapter) {
  if (classify_) return EvaluateClassification(adapter);
  if (dpo_) {
    return CatchTorch("evaluation", [&]() -> absl::StatusOr<EvalResult> {
      at::NoGradGuard no_grad;
      const int64_t chunk = h_.micro_batch_size > 0 ? h_.micro_batch_size : per_rank_batch_;
      // loss, correct, pairs, margin, chosen, rejected
      std::vector<double> v(6, 0.0);
      for (int64_t i = 0; i < Units(*valid_); i += chunk) {
        std::vector<int64_t> pairs;
        for (int64_t k = i; k < std::min(Units(*valid_), i + chunk); ++k) pairs.push_back(k);
        TF_ASSIGN_OR_RETURN(DpoBatchOutput out,
                            DpoBatch(Dpo(adapter), *valid_, pairs, h_.max_sequence_length, false));
        v[0] += out.loss.loss_sum.item<double>();
        v[1] += static_cast<double>(out.loss.correct);
        v[2] += static_cast<double>(out.loss.pairs);
        v[3] += out.loss.margin_sum;
        v[4] += out.loss.chosen_reward_sum;
        v[5] += out.loss.rejected_reward_sum;
      }
      TF_RETURN_IF_ERROR(SumOverRanks(v));
      EvalResult r;
      r.tokens = static_cast<int64_t>(v[2]);
      r.loss = r.tokens > 0 ? v[0] / v[2] : NAN;
      r.accuracy = r.tokens > 0 ? v[1] / v[2] : NAN;
      if (r.tokens > 0) {
        r.metrics["reward_margin"] = v[3] / v[2];
        r.metrics["chosen_reward"] = v[4] / v[2];
        r.metrics["rejected_reward"] = v[5] / v[2];
      }
      return r;
    });
  }
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
  // The global batch (examples, or pairs for DPO).
  const int64_t begin = in_epoch * h_.batch_size;
  const int64_t end = std::min<int64_t>(global_n_, begin + h_.batch_size);
  const std::vector<int64_t> batch(order_.begin() + begin, order_.begin() + end);
  // One rank: the batch's units are its own. Several: each rank holds a part
  // of the set, so a batch's units fall unevenly on them (in count and in
  // length), and the step waits for the slowest. The batch's tokens are
  // gathered on every rank instead and split by real tokens
  // (BalanceAcrossRanks); only where the examples are stored depends on the
  // parts, not which rank computes them.
  std::optional<Dataset> gathered;
  std::vector<int64_t> examples = batch;  // units of `data` this rank computes
  if (spec_.world_size > 1) {
    absl::StatusOr<Dataset> g = CatchTorch("gathering the batch", [&] { return GatherBatch(batch); });
    if (!g.ok()) return g.status();
    gathered = *std::move(g);
    std::vector<int64_t> costs;
    for (int64_t u = 0; u < static_cast<int64_t>(batch.size()); ++u) {
      costs.push_back(dpo_ ? gathered->at(2 * u).length + gathered->at(2 * u + 1).length
                           : gathered->at(u).length);
    }
    examples = BalanceAcrossRanks(costs, spec_.world_size)[static_cast<size_t>(spec_.rank)];
  }
  const Dataset& data = gathered ? *gathered : *train_;
  int64_t step_trained = 0;
  for (int64_t u = 0; u < static_cast<int64_t>(batch.size()); ++u)
    step_trained += UnitTrained(data, gathered ? u : batch[static_cast<size_t>(u)]);
  // DPO: the loss is the mean over the step's pairs, on every rank.
  const int64_t step_pairs = static_cast<int64_t>(batch.size());
  return CatchTorch("training step", [&]() -> absl::Status {
    // Dropout draws depend on (seed, step) only, so a resumed run draws the same.
    at::manual_seed(static_cast<uint64_t>(h_.seed) * 1000003ull + static_cast<uint64_t>(step));
    for (at::Tensor& p : params_) p.mutable_grad() = at::Tensor();
    // SFT: loss_sum over tokens (count = tokens). DPO: over pairs (count =
    // pairs), with the margin and rewards summed beside.
    double loss_sum = 0, margin_sum = 0, chosen_sum = 0, rejected_sum = 0;
    int64_t correct = 0, tokens = 0;
    step_real_tokens_ = 0;
    const std::vector<std::vector<int64_t>> micros =
        dpo_ ? SplitPairMicroBatches(data, examples, h_.micro_batch_size)
             : SplitMicroBatches(data, examples, h_.micro_batch_size, h_.packing);
    // With several ranks the Reducer reduces the last backward of the step
    // (which carries the accumulated gradients) and averages over ranks, so
    // each rank's loss carries world_size.
    const bool ddp = spec_.world_size > 1;
    const double world = static_cast<double>(spec_.world_size);
    int64_t last_backward = -1;
    for (size_t i = 0; i < micros.size(); ++i) {
      int64_t t = 0;
      for (int64_t e : micros[i]) t += (dpo_ || classify_) ? 1 : data.at(e).trained;
      if (t > 0) last_backward = static_cast<int64_t>(i);
    }
    auto backward = [&](const at::Tensor& scaled, size_t i) -> absl::Status {
      if (ddp && static_cast<int64_t>(i) == last_backward) {
        TF_RETURN_IF_ERROR(coll_->PrepareSyncedBackward(scaled));
        return SyncedBackward(scaled);
      }
      scaled.backward();
      return absl::OkStatus();
    };
    for (size_t i = 0; i < micros.size(); ++i) {
      if (dpo_) {
        if (micros[i].empty()) continue;
        TF_ASSIGN_OR_RETURN(DpoBatchOutput out,
                            DpoBatch(Dpo(lora_ ? &*lora_ : nullptr), data, micros[i],
                                     h_.max_sequence_length, /*training=*/true,
                                     h_.gradient_checkpointing));
        real_tokens_ += out.real_tokens;
        slots_ += out.slots;
        step_real_tokens_ += out.real_tokens;
        double scale = 1.0 / static_cast<double>(step_pairs);
        if (ddp) scale *= world;
        TF_RETURN_IF_ERROR(backward(out.loss.loss_sum * scale, i));
        loss_sum += out.loss.loss_sum.item<double>();
        correct += out.loss.correct;
        tokens += out.loss.pairs;
        margin_sum += out.loss.margin_sum;
        chosen_sum += out.loss.chosen_reward_sum;
        rejected_sum += out.loss.rejected_reward_sum;
        continue;
      }
      if (classify_) {
        if (micros[i].empty()) continue;
        // One example a row; the mean over the step's examples.
        MicroBatch mb = MakeMicroBatch(data, micros[i], false, h_.max_sequence_length, true);
        real_tokens_ += mb.real_tokens;
        slots_ += mb.slots;
        step_real_tokens_ += mb.real_tokens;
        model::ForwardOptions fo;
        fo.attention_mask = mb.attention_mask;  // on the host: the decoder reads its runs
        fo.adapter = Adapter();
        fo.training = true;
        fo.gradient_checkpointing = h_.gradient_checkpointing;
        TF_ASSIGN_OR_RETURN(at::Tensor logits, ClassLogits(mb, fo));
        at::Tensor target = mb.class_labels.to(device_);
        at::Tensor loss = at::nll_loss(at::log_softmax(logits, -1), target, {}, at::Reduction::Sum);
        double scale = 1.0 / static_cast<double>(step_pairs);
        if (ddp) scale *= world;
        TF_RETURN_IF_ERROR(backward(loss * scale, i));
        loss_sum += loss.item<double>();
        correct += logits.detach().argmax(-1).eq(target).sum().item<int64_t>();
        tokens += static_cast<int64_t>(micros[i].size());
        continue;
      }
      MicroBatch mb = MakeMicroBatch(data, micros[i], h_.packing, h_.max_sequence_length);
      real_tokens_ += mb.real_tokens;
      slots_ += mb.slots;
      step_real_tokens_ += mb.real_tokens;
      if (mb.trained_tokens == 0) continue;
      model::ForwardOptions fo;
      fo.sequence_ids = mb.sequence_ids;
      fo.attention_mask = mb.attention_mask;
      fo.adapter = Adapter();
      fo.training = true;
      fo.gradient_checkpointing = h_.gradient_checkpointing;
      TF_ASSIGN_OR_RETURN(model::Decoder::LossOutput out, decoder_->Loss(mb.input_ids, mb.labels, fo));
      // Normalised by the trained tokens of the whole step, not per micro-batch.
      double scale = static_cast<double>(out.tokens) / static_cast<double>(step_trained);
      if (ddp) scale *= world;
      TF_RETURN_IF_ERROR(backward(out.loss * scale, i));
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
      std::vector<double> v = {loss_sum,   static_cast<double>(correct), static_cast<double>(tokens),
                               margin_sum, chosen_sum,                    rejected_sum};
      TF_RETURN_IF_ERROR(SumOverRanks(v));
      loss_sum = v[0];
      correct = static_cast<int64_t>(v[1]);
      tokens = static_cast<int64_t>(v[2]);
      margin_sum = v[3];
      chosen_sum = v[4];
      rejected_sum = v[5];
    }
    ClipGradNorm(params_, h_.max_grad_norm);
    optimizer_->Step(ScheduledLearningRate(h_, step, total_steps_));
    last_loss_ = tokens > 0 ? loss_sum / static_cast<double>(tokens) : NAN;
    last_accuracy_ = tokens > 0 ? static_cast<double>(correct) / static_cast<double>(tokens) : NAN;
    last_metrics_.clear();
    if (dpo_ && tokens > 0) {
      last_metrics_["reward_margin"] = margin_sum / static_cast<double>(tokens);
      last_metrics_["chosen_reward"] = chosen_sum / static_cast<double>(tokens);
      last_metrics_["rejected_reward"] = rejected_sum / static_cast<double>(tokens);
    }
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
  model::NamedTensors weights = HeadWeights();
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
    for (const auto& [k, val] : last_eval_->metrics) e.metrics[k] = val;
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
    if (spec_.write_merged) {
      // The base with the adapter folded in, beside it: merged/.
      model::SaveOptions so;
      so.copy_files_from = spec_.base_model_dir;
      fs::create_directories(fs::path(tmp) / "merged", ec);
      if (ec) return absl::InternalError(absl::StrCat("output_dir ", tmp, "/merged: ", ec.message()));
      TF_RETURN_IF_ERROR(model::SaveHfModel(*decoder_, (fs::path(tmp) / "merged").string(),
                                            &*lora_, so));
    }
  } else {
    model::SaveOptions so;
    so.copy_files_from = spec_.base_model_dir;
    TF_RETURN_IF_ERROR(model::SaveHfModel(*decoder_, tmp, nullptr, so));
  }
  if (classify_) {
    // The head as LlamaForSequenceClassification names it, in a file of its own.
    TF_RETURN_IF_ERROR(model::WriteSafetensors(
        (fs::path(tmp) / "score.safetensors").string(),
        model::NamedTensors{{"score.weight", head_.detach().cpu().contiguous()}}));
  }
  // The train-to-serve contract: what serving must pair this result with.
  json c;
  c["format_version"] = 1;
  c["job_id"] = spec_.job_id;
  c["base_model_id"] = base_model_id_;
  c["method"] = MethodName(spec_.method);
  c["task"] = TaskName(spec_.task);
  if (classify_) {
    std::vector<std::string> names = spec_.label_names;
    for (int64_t i = static_cast<int64_t>(names.size()); i < spec_.num_labels; ++i)
      names.push_back(absl::StrCat(i));
    c["num_labels"] = spec_.num_labels;
    c["label_names"] = names;
    c["classification_head"] = {{"file", "score.safetensors"},
                                {"tensor", "score.weight"},
                                {"input", "last_token_final_hidden_state"}};
  }
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
  if (lora_ && spec_.write_merged) c["merged_dir"] = "merged";
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
// or dies surfaces there, and is the peers' failure, not ours. Gloo's own
// errors (a timed-out receive, a closed connection) come through as they
// were thrown, not as c10::Error.
absl::Status Run::SyncedBackward(const at::Tensor& loss) {
  try {
    loss.backward();
    return absl::OkStatus();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("backward: out of memory: ", e.what_without_backtrace()));
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(absl::StrCat("backward: out of memory: ", e.what()));
  } catch (const c10::Error& e) {
    return absl::UnavailableError(
        absl::StrCat("gradient all-reduce with the other ranks: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("gradient all-reduce with the other ranks: ", e.what()));
  }
}

bool Run::AnyStopRequested() {
  if (spec_.world_size == 1) return StopRequested();
  // A stop on any rank stops all at the same step.
  std::vector<double> v = {StopRequested() ? 1.0 : 0.0};
  if (!SumOverRanks(v).ok()) return true;
  return v[0] > 0;
}

// Every rank contributes the units of the batch it holds; two sums over the
// ranks (the examples' lengths and labels, then their ids and masks, each
// written by one rank and zero on the others) give every rank all of them,
// in the batch's order (a DPO pair as two examples).
absl::StatusOr<Dataset> Run::GatherBatch(const std::vector<int64_t>& units) {
  const int64_t per = dpo_ ? 2 : 1;
  const int64_t n = static_cast<int64_t>(units.size()) * per;
  // The batch's examples this rank stores (null: another rank's).
  std::vector<const Example*> mine(static_cast<size_t>(n), nullptr);
  const int64_t local_units = Units(*train_);
  for (size_t i = 0; i < units.size(); ++i) {
    const int64_t local = units[i] - part_begin_;
    if (local < 0 || local >= local_units) continue;
    for (int64_t k = 0; k < per; ++k) mine[i * static_cast<size_t>(per) + static_cast<size_t>(k)] = &train_->at(local * per + k);
  }
  at::Tensor head = at::zeros({2 * n}, at::kLong);  // length, label + 1
  int64_t* ph = head.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    if (const Example* x = mine[static_cast<size_t>(j)]) {
      ph[2 * j] = x->length;
      ph[2 * j + 1] = x->label + 1;
    }
  }
  TF_RETURN_IF_ERROR(coll_->AllReduceSum(head));
  std::vector<int64_t> offset(static_cast<size_t>(n) + 1, 0);
  for (int64_t j = 0; j < n; ++j) offset[static_cast<size_t>(j) + 1] = offset[static_cast<size_t>(j)] + ph[2 * j];
  const int64_t total = offset.back();
  at::Tensor body = at::zeros({2 * total}, at::kInt);  // every example's ids, then every mask
  int32_t* pb = body.data_ptr<int32_t>();
  for (int64_t j = 0; j < n; ++j) {
    const Example* x = mine[static_cast<size_t>(j)];
    if (x == nullptr) continue;
    const int64_t pos = offset[static_cast<size_t>(j)];
    std::copy(x->ids, x->ids + x->length, pb + pos);
    std::copy(x->mask, x->mask + x->length, pb + total + pos);
  }
  TF_RETURN_IF_ERROR(coll_->AllReduceSum(body));
  std::vector<Dataset::Owned> out(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t a = offset[static_cast<size_t>(j)], b = offset[static_cast<size_t>(j) + 1];
    if (a == b) {
      return absl::InternalError(absl::StrCat("unit ", units[static_cast<size_t>(j / per)],
                                              " of the batch is held by no rank"));
    }
    Dataset::Owned& o = out[static_cast<size_t>(j)];
    o.ids.assign(pb + a, pb + b);
    o.mask.assign(pb + total + a, pb + total + b);
    o.label = static_cast<int32_t>(ph[2 * j + 1] - 1);
  }
  return Dataset::FromOwned(std::move(out), dpo_);
}

absl::Status Run::SumOverRanks(std::vector<double>& values) {
  if (spec_.world_size == 1) return absl::OkStatus();
  at::Tensor t = at::tensor(values, at::kDouble);
  TF_RETURN_IF_ERROR(coll_->AllReduceSum(t));
  for (size_t i = 0; i < values.size(); ++i) values[i] = t[static_cast<int64_t>(i)].item<double>();
  return absl::OkStatus();
}

// Early stopping keeps the best validation loss and, on rank 0, the weights
// that scored it under <checkpoint_root>/best/ (so a resumed run still has
// them); the result is those weights. The counters live in the checkpoint's
// trainer state, so a resume stops where an uninterrupted run would.
absl::StatusOr<bool> Run::TrackBest(int64_t step, const EvalResult& r) {
  if (h_.early_stopping_patience <= 0) return false;
  if (std::isfinite(r.loss) && (!state_.best_valid_loss || r.loss < *state_.best_valid_loss)) {
    state_.best_valid_loss = r.loss;
    state_.best_step = step;
    state_.evals_since_best = 0;
    best_eval_ = r;
    if (spec_.rank == 0) {
      model::NamedTensors weights = HeadWeights();
      if (!lora_) {
        for (size_t i = 0; i < params_.size(); ++i)
          weights.emplace_back(absl::StrCat("param.", i), params_[i].detach());
      }
      TF_RETURN_IF_ERROR(WriteBestWeights(spec_.checkpoint_root, step, lora_ ? &*lora_ : nullptr,
                                          weights, base_model_id_));
    }
    return false;
  }
  ++state_.evals_since_best;
  return state_.evals_since_best >= h_.early_stopping_patience;
}

absl::Status Run::RestoreBest() {
  if (h_.early_stopping_patience <= 0 || !state_.best_valid_loss) return absl::OkStatus();
  // The contract's figures are the published model's.
  if (best_eval_) {
    last_eval_ = best_eval_;
  } else if (last_eval_) {
    last_eval_->loss = *state_.best_valid_loss;
  }
  if (spec_.rank != 0 || state_.best_step == state_.step) return absl::OkStatus();
  absl::StatusOr<BestWeights> best = ReadBestWeights(spec_.checkpoint_root, decoder_->config(), device_);
  if (!best.ok()) {
    return absl::Status(best.status().code(),
                        absl::StrCat("early stopping: the best weights (step ", state_.best_step,
                                     "): ", best.status().message()));
  }
  if (best->step != state_.best_step) {
    return absl::DataLossError(absl::StrCat("early stopping: ", spec_.checkpoint_root,
                                            "/best holds step ", best->step, ", not the best step ",
                                            state_.best_step));
  }
  Log(absl::StrCat("job=", spec_.job_id, " publishing the best weights (step ", best->step,
                   ", valid loss ", *state_.best_valid_loss, ")"));
  return CatchTorch("restoring the best weights", [&]() -> absl::Status {
    if (lora_) {
      if (!best->adapter) return absl::DataLossError("early stopping: the best weights are not an adapter");
      lora_ = std::move(*best->adapter);
      if (classify_) {
        at::NoGradGuard no_grad;
        bool found = false;
        for (const auto& [name, t] : best->weights) {
          if (name == "score.weight" && t.sizes() == head_.sizes()) {
            head_.copy_(t);
            found = true;
          }
        }
        if (!found) return absl::DataLossError("early stopping: the best weights have no head");
      }
      return absl::OkStatus();
    }
    if (best->weights.size() != params_.size())
      return absl::DataLossError("early stopping: the best weights do not match the model");
    at::NoGradGuard no_grad;
    for (const auto& [name, t] : best->weights) {
      size_t i = 0;
      if (!absl::SimpleAtoi(absl::StripPrefix(name, "param."), &i) || i >= params_.size() ||
          params_[i].sizes() != t.sizes())
        return absl::DataLossError(absl::StrCat("early stopping: best weight ", name, " does not fit"));
      params_[i].copy_(t);
    }
    return absl::OkStatus();
  });
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
  // Evaluates; true when early stopping ends the run here.
  auto eval = [&](int64_t step) -> absl::StatusOr<bool> {
    if (!valid_) return false;
    TF_ASSIGN_OR_RETURN(EvalResult r, Evaluate(lora_ ? &*lora_ : nullptr));
    last_eval_ = r;
    ReportEvent e;
    e.kind = ReportKind::kEval;
    e.step = step;
    e.epoch = static_cast<double>(step) / static_cast<double>(steps_per_epoch_);
    e.valid_loss = r.loss;
    e.valid_token_accuracy = r.accuracy;
    e.metrics = r.metrics;
    Report(options_, e);
    return TrackBest(step, r);
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
    SampleDeviceMemory();
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
      e.metrics = last_metrics_;
      Report(options_, e);
      last_report = now;
      tokens_since = 0;
    }
    const bool epoch_end = done % steps_per_epoch_ == 0;
    if (epoch_end || (h_.eval_interval_steps > 0 && done % h_.eval_interval_steps == 0) ||
        done == total_steps_) {
      TF_ASSIGN_OR_RETURN(stopped_early_, eval(done));
    }
    if (epoch_end || (h_.checkpoint_interval_steps > 0 && done % h_.checkpoint_interval_steps == 0)) {
      TF_ASSIGN_OR_RETURN(last_checkpoint, SaveCheckpoint(done));
      last_checkpoint_step = done;
    }
    if (stopped_early_) {
      Log(absl::StrCat("job=", spec_.job_id, " stopped early at step ", done, ": ",
                       state_.evals_since_best, " evaluations without a better valid loss than ",
                       *state_.best_valid_loss, " (step ", state_.best_step, ")"));
      break;
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
  TF_RETURN_IF_ERROR(RestoreBest());
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
  e.stopped_early = stopped_early_;
  if (h_.early_stopping_patience > 0 && state_.best_valid_loss) {
    e.valid_loss = *state_.best_valid_loss;  // the published model's
    if (best_eval_) e.valid_token_accuracy = best_eval_->accuracy;
    e.metrics["best_step"] = static_cast<double>(state_.best_step);
    e.metrics["best_valid_loss"] = *state_.best_valid_loss;
  }
  if (state_.base_valid_accuracy) e.metrics["base_valid_token_accuracy"] = *state_.base_valid_accuracy;
  if (slots_ > 0) e.metrics["padding_fraction"] = 1.0 - static_cast<double>(real_tokens_) / static_cast<double>(slots_);
  if (state_.train_loss) e.metrics["train_loss"] = *state_.train_loss;
  e.metrics["estimated_memory_bytes"] = static_cast<double>(estimated_memory_bytes_);
  rusage ru = {};
  if (::getrusage(RUSAGE_SELF, &ru) == 0)
    e.metrics["peak_rss_bytes"] = static_cast<double>(ru.ru_maxrss) * 1024.0;
  SampleDeviceMemory();
  if (peak_device_bytes_ > 0) e.metrics["peak_device_bytes"] = static_cast<double>(peak_device_bytes_);
  if (runtime_bytes_ > 0) e.metrics["runtime_bytes"] = static_cast<double>(runtime_bytes_);
  Report(options_, e);
  return WorkerOutcome{false, result};
}

}  // namespace

absl::StatusOr<WorkerOutcome> RunWorker(const WorkerSpec& spec, const WorkerRunOptions& options) {
  Run run(spec, options);
  return CatchTorch("train worker", [&]() { return run.Go(); });
}

}  // namespace tunefleet::trainer
