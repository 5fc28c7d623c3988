#include "services/dataset/splitter.h"

#include <cmath>
#include <map>

#include "common/errors/error_details.h"
#include "absl/strings/str_cat.h"
#include "common/base/random.h"
#include "common/base/status_macros.h"
#include "services/dataset/analyzer.h"

namespace tunefleet::dataset {
namespace {

std::string Stem(const std::string& filename) {
  size_t dot = filename.rfind('.');
  return dot == std::string::npos || dot == 0 ? filename : filename.substr(0, dot);
}

}  // namespace

std::vector<bool> ChooseValidation(const std::vector<std::string>& groups, double ratio,
                                   uint64_t seed) {
  std::map<std::string, std::vector<size_t>> by_group;  // ordered: deterministic
  for (size_t i = 0; i < groups.size(); ++i) by_group[groups[i]].push_back(i);
  std::vector<bool> chosen(groups.size(), false);
  SplitMix64 rng(seed);
  size_t total = 0;
  for (auto& [group, members] : by_group) {
    for (size_t i = members.size(); i > 1; --i) std::swap(members[i - 1], members[rng.Below(i)]);
    size_t k = static_cast<size_t>(std::llround(static_cast<double>(members.size()) * ratio));
    for (size_t j = 0; j < k; ++j) chosen[members[j]] = true;
    total += k;
  }
  if (total == 0 && groups.size() >= 2) chosen[rng.Below(groups.size())] = true;
  if (total == groups.size() && !groups.empty()) chosen[rng.Below(groups.size())] = false;
  return chosen;
}

absl::StatusOr<SplitResult> SplitFile(FileRegistry& registry, const std::string& tenant,
                                      const std::string& file_id, double ratio, int64_t seed,
                                      const std::string& request_id) {
  if (!(ratio > 0 && ratio <= 0.5)) {
    return errors::InvalidField(
        "validation_ratio", absl::StrCat("validation_ratio must be in (0, 0.5], not ", ratio));
  }
  if (request_id.size() > 128) return errors::FieldError("request_id", "at most 128 characters");
  // The outputs carry derived idempotency keys; a retry finds both.
  const std::string train_key =
      request_id.empty() ? "" : absl::StrCat("split:", request_id, ":training");
  const std::string valid_key =
      request_id.empty() ? "" : absl::StrCat("split:", request_id, ":validation");
  if (!request_id.empty()) {
    TF_ASSIGN_OR_RETURN(std::optional<FileRecord> t, registry.FindByRequestId(tenant, train_key));
    TF_ASSIGN_OR_RETURN(std::optional<FileRecord> v, registry.FindByRequestId(tenant, valid_key));
    if (t.has_value() && v.has_value()) return SplitResult{*std::move(t), *std::move(v)};
  }
  TF_ASSIGN_OR_RETURN(FileRecord source, registry.Get(Scope::Tenant(tenant), file_id));
  AnalyzeOptions options;
  if (source.format != 0) options.format = static_cast<DataFormat>(source.format);
  options.min_examples = 2;
  options.max_issues = 1;
  std::vector<int64_t> lines;
  std::vector<std::string> groups;
  options.on_example = [&](const Example& ex) {
    lines.push_back(ex.line);
    groups.push_back(ex.label);
  };
  {
    TF_ASSIGN_OR_RETURN(auto reader, registry.OpenContent(Scope::Tenant(tenant), file_id, 0));
    TF_ASSIGN_OR_RETURN(Analysis analysis, Analyze(*reader, options));
    if (!analysis.validation.valid()) {
      const ValidationIssue& first = analysis.validation.issues.front();
      return absl::FailedPreconditionError(absl::StrCat(
          "file ", file_id, " has ", analysis.validation.total_errors,
          " validation errors and cannot be split; the first: ",
          first.line > 0 ? absl::StrCat("line ", first.line, ": ") : "", first.message));
    }
    options.format = analysis.format;
  }
  std::vector<bool> chosen = ChooseValidation(groups, ratio, static_cast<uint64_t>(seed));
  // Line number -> part, for the second pass.
  std::vector<int8_t> part_of_line(lines.empty() ? 0 : lines.back() + 1, -1);
  for (size_t i = 0; i < lines.size(); ++i) part_of_line[lines[i]] = chosen[i] ? 1 : 0;

  const std::string stem = Stem(source.filename);
  UploadRequest train_req{stem + "-train.jsonl", Purpose::kFineTune, source.format, 0, "",
                          source.labels, source.description, train_key};
  UploadRequest valid_req{stem + "-validation.jsonl", Purpose::kValidation, source.format, 0, "",
                          source.labels, source.description, valid_key};
  TF_ASSIGN_OR_RETURN(auto train, registry.BeginUpload(tenant, train_req));
  TF_ASSIGN_OR_RETURN(auto valid, registry.BeginUpload(tenant, valid_req));
  absl::Status write_status;
  options.on_example = [&](const Example& ex) {
    if (!write_status.ok()) return;
    Upload& out = part_of_line[ex.line] == 1 ? *valid : *train;
    write_status = out.Append(ex.raw);
    if (write_status.ok()) write_status = out.Append("\n");
  };
  {
    TF_ASSIGN_OR_RETURN(auto reader, registry.OpenContent(Scope::Tenant(tenant), file_id, 0));
    TF_ASSIGN_OR_RETURN(Analysis second, Analyze(*reader, options));
    (void)second;
  }
  TF_RETURN_IF_ERROR(write_status);
  SplitResult result;
  TF_ASSIGN_OR_RETURN(result.training, train->Commit());
  absl::StatusOr<FileRecord> v = valid->Commit();
  if (!v.ok()) {
    (void)registry.Delete(tenant, result.training.id);
    return v.status();
  }
  result.validation = *std::move(v);
  return result;
}

}  // namespace tunefleet::dataset
