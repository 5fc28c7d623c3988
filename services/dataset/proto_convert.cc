#include "services/dataset/proto_convert.h"

#include "common/base/proto_time.h"

namespace tunefleet::dataset {
namespace {

void SetDistribution(const Distribution& d, v1::Distribution* out) {
  out->set_min(d.min);
  out->set_mean(d.mean);
  out->set_p50(d.p50);
  out->set_p95(d.p95);
  out->set_max(d.max);
}

}  // namespace

void ToProto(const Analysis& a, v1::ValidationReport* out) {
  out->set_valid(a.validation.valid());
  for (const ValidationIssue& i : a.validation.issues) {
    v1::ValidationIssue* p = out->add_issues();
    p->set_severity(i.severity == IssueSeverity::kError ? v1::ISSUE_SEVERITY_ERROR
                                                        : v1::ISSUE_SEVERITY_WARNING);
    p->set_line(i.line);
    p->set_field(i.field);
    p->set_code(i.code);
    p->set_message(i.message);
  }
  out->set_total_errors(a.validation.total_errors);
  out->set_total_warnings(a.validation.total_warnings);
  const DatasetStatistics& s = a.statistics;
  v1::TokenStatistics* t = out->mutable_statistics();
  t->set_examples(s.examples);
  SetDistribution(s.messages_per_example, t->mutable_messages_per_example());
  if (s.has_tokens) SetDistribution(s.tokens_per_example, t->mutable_tokens_per_example());
  t->set_trained_tokens(s.trained_tokens);
  t->set_total_tokens(s.total_tokens);
  t->set_examples_missing_system(s.examples_missing_system);
  t->set_examples_missing_user(s.examples_missing_user);
  t->set_duplicate_examples(s.duplicate_examples);
  t->set_examples_over_max_length(s.examples_over_max_length);
  t->set_tokens_truncated(s.tokens_truncated);
  for (int64_t line : s.over_max_length_lines) t->add_over_max_length_lines(line);
  for (const auto& [label, count] : s.label_counts) (*t->mutable_label_counts())[label] = count;
  out->set_trained_tokens_per_epoch(s.trained_tokens);
}

void ToProto(const FileRecord& r, v1::File* out) {
  out->set_id(r.id);
  out->set_filename(r.filename);
  out->set_purpose(static_cast<v1::FilePurpose>(r.purpose));
  out->set_bytes(r.bytes);
  out->set_sha256(r.sha256);
  out->set_status(static_cast<v1::FileStatus>(r.status));
  out->set_status_details(r.status_details);
  out->set_format(static_cast<v1::DataFormat>(r.format));
  *out->mutable_created_at() = ToTimestamp(r.created_at);
  if (!r.validation.empty()) out->mutable_validation()->ParseFromString(r.validation);
  out->mutable_labels()->insert(r.labels.begin(), r.labels.end());
  out->set_description(r.description);
}

std::string EncodeReport(const FileRecord& file, const Analysis& analysis) {
  v1::ValidationReport report;
  report.set_file_id(file.id);
  ToProto(analysis, &report);
  return report.SerializeAsString();
}

}  // namespace tunefleet::dataset
