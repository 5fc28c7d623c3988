// The dataset's use cases that run beside the RPC layer, gRPC-free:
// the automatic validation of every upload (FileProcessor) and ValidateFile.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/base/scope.h"
#include "services/dataset/analyzer.h"
#include "services/dataset/file_registry.h"
#include "services/dataset/tokenizer_provider.h"

namespace tunefleet::dataset {

// Counts through a tokenizer: all tokens, and those with loss.
TokenCounter CountWith(ExampleTokenizer tokenize);

// Fewest examples a file of this purpose must have (fine-tune 10, validation 1).
int64_t MinExamples(Purpose purpose);

// "3 errors; line 4 messages[0].role: ...; line 9: invalid JSON: ..."
std::string SummarizeErrors(const ValidationSummary& v);

// Turns an analysis into the opaque report the registry stores with the file
// (the service layer's wire format; the core does not know it).
using ReportEncoder = std::function<std::string(const FileRecord&, const Analysis&)>;

// Validates every uploaded file in the background (uploaded -> processing ->
// processed | error), one file at a time on its own thread, and on start-up
// the files a restart interrupted. Thread-safe. The destructor finishes the
// file in progress and drops the rest (they stay pending in the registry and
// are redone by the next RecoverPending).
class FileProcessor {
 public:
  FileProcessor(FileRegistry* registry, ReportEncoder encode_report);
  ~FileProcessor();
  FileProcessor(const FileProcessor&) = delete;
  FileProcessor& operator=(const FileProcessor&) = delete;

  void Enqueue(const FileRecord& file);
  // Re-enqueues files left unprocessed by a previous run.
  absl::Status RecoverPending();
  // Validates synchronously (runs on the caller's thread).
  absl::Status Process(const FileRecord& file);
  // Blocks until every file enqueued so far has been processed (for tests
  // and orderly shutdown; never needed on the request path).
  void WaitUntilIdle();

 private:
  void Loop();

  FileRegistry* const registry_;
  const ReportEncoder encode_report_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<FileRecord> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

// ValidateFile: checks a stored file for a base model's tokenizer and
// length. Errors name the field (max_issues, max_sequence_length, epochs,
// base_model) or the file.
struct ValidateRequest {
  std::string file_id;
  std::string base_model;  // empty: no token statistics
  int64_t max_sequence_length = 0;
  std::optional<DataFormat> format;
  int64_t max_issues = 0;  // 0: 100
  int64_t epochs = 0;      // 0: 1
  std::function<bool()> cancelled;  // see AnalyzeOptions::cancelled
};

struct ValidateResult {
  FileRecord file;
  Analysis analysis;
  int64_t epochs = 1;
  int64_t estimated_trained_tokens = 0;
};

absl::StatusOr<ValidateResult> ValidateStoredFile(FileRegistry& registry,
                                                  TokenizerProvider* tokenizers,
                                                  const Scope& scope, const ValidateRequest& req);

}  // namespace tunefleet::dataset
