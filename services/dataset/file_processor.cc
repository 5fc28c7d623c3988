#include "services/dataset/file_processor.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/errors/error_details.h"

namespace tunefleet::dataset {

TokenCounter CountWith(ExampleTokenizer tokenize) {
  return [tokenize = std::move(tokenize)](const Example& ex) -> absl::StatusOr<TokenCount> {
    // A classification line (text and label, no messages) is counted as the
    // shards render it.
    TF_ASSIGN_OR_RETURN(TokenizedExample t, ex.messages.empty() ? TokenizeClassification(tokenize, ex)
                                                                : tokenize(ex));
    TokenCount c;
    c.total = static_cast<int64_t>(t.ids.size());
    for (uint8_t m : t.loss_mask) c.trained += m ? 1 : 0;
    return c;
  };
}

int64_t MinExamples(Purpose purpose) { return purpose == Purpose::kValidation ? 1 : 10; }

std::string SummarizeErrors(const ValidationSummary& v) {
  std::string out = absl::StrCat(v.total_errors, v.total_errors == 1 ? " error" : " errors");
  int shown = 0;
  for (const ValidationIssue& i : v.issues) {
    if (i.severity != IssueSeverity::kError || shown == 3) continue;
    ++shown;
    absl::StrAppend(&out, "; ", i.line > 0 ? absl::StrCat("line ", i.line) : "file",
                    i.field.empty() ? "" : absl::StrCat(" ", i.field), ": ", i.message);
  }
  return out;
}

FileProcessor::FileProcessor(FileRegistry* registry, ReportEncoder encode_report)
    : registry_(registry), encode_report_(std::move(encode_report)) {
  thread_ = std::thread([this] { Loop(); });
}

FileProcessor::~FileProcessor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void FileProcessor::Enqueue(const FileRecord& file) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(file);
  }
  cv_.notify_all();
}

void FileProcessor::WaitUntilIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return (queue_.empty() && !busy_) || stopping_; });
}

void FileProcessor::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    FileRecord file = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    absl::Status s = Process(file);
    if (!s.ok() && !absl::IsNotFound(s)) {
      spdlog::warn("file={} validation failed: {}", file.id, s.ToString());
    }
    lock.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

absl::Status FileProcessor::RecoverPending() {
  TF_ASSIGN_OR_RETURN(std::vector<FileRecord> pending, registry_->PendingValidation());
  for (const FileRecord& f : pending) Enqueue(f);
  if (!pending.empty())
    spdlog::info("re-validating {} file(s) a restart interrupted", pending.size());
  return absl::OkStatus();
}

absl::Status FileProcessor::Process(const FileRecord& file) {
  TF_RETURN_IF_ERROR(registry_->SetStatus(file.id, FileStatus::kProcessing, "", ""));
  auto reader = registry_->OpenContent(Scope::Platform(), file.id, 0);
  if (!reader.ok()) return reader.status();
  AnalyzeOptions options;
  if (file.format != 0) options.format = static_cast<DataFormat>(file.format);
  options.min_examples = MinExamples(file.purpose);
  absl::StatusOr<Analysis> analysis = Analyze(**reader, options);
  if (!analysis.ok()) {
    return registry_->SetStatus(file.id, FileStatus::kError,
                                absl::StrCat("cannot read the file: ", analysis.status().message()),
                                "");
  }
  bool valid = analysis->validation.valid();
  spdlog::info("file={} validated: {} examples, {} errors, {} warnings", file.id,
               analysis->validation.examples, analysis->validation.total_errors,
               analysis->validation.total_warnings);
  // A file uploaded without a format gets the one its lines have, so that
  // a job can check it (DPO needs preference data).
  return registry_->SetStatus(file.id, valid ? FileStatus::kProcessed : FileStatus::kError,
                              valid ? "" : SummarizeErrors(analysis->validation),
                              encode_report_ ? encode_report_(file, *analysis) : "",
                              valid ? static_cast<int>(analysis->format) : 0);
}

absl::StatusOr<ValidateResult> ValidateStoredFile(FileRegistry& registry,
                                                  TokenizerProvider* tokenizers,
                                                  const Scope& scope, const ValidateRequest& req) {
  if (req.max_issues < 0) {
    return errors::InvalidField("max_issues", "max_issues must not be negative");
  }
  if (req.max_sequence_length < 0) {
    return errors::InvalidField("max_sequence_length", "max_sequence_length must not be negative");
  }
  if (req.epochs < 0) return errors::InvalidField("epochs", "epochs must not be negative");
  AnalyzeOptions options;
  options.max_issues = req.max_issues > 0 ? static_cast<size_t>(req.max_issues) : 100;
  options.max_sequence_length = req.max_sequence_length;
  options.format = req.format;
  options.cancelled = req.cancelled;
  if (!req.base_model.empty()) {
    if (tokenizers == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("token statistics need a base model's tokenizer, and this dataset "
                       "service has no models configured (base_model '",
                       req.base_model, "')"));
    }
    TF_ASSIGN_OR_RETURN(ModelTokenizer tokenizer, tokenizers->Get(req.base_model));
    options.token_counter = CountWith(tokenizer.tokenize);
  }
  ValidateResult out;
  TF_ASSIGN_OR_RETURN(out.file, registry.Get(scope, req.file_id));
  options.min_examples = MinExamples(out.file.purpose);
  if (!options.format.has_value() && out.file.format != 0) {
    options.format = static_cast<DataFormat>(out.file.format);
  }
  TF_ASSIGN_OR_RETURN(auto reader, registry.OpenContent(scope, req.file_id, 0));
  TF_ASSIGN_OR_RETURN(out.analysis, Analyze(*reader, options));
  out.epochs = req.epochs > 0 ? req.epochs : 1;
  out.estimated_trained_tokens = out.analysis.statistics.trained_tokens * out.epochs;
  return out;
}

}  // namespace tunefleet::dataset
