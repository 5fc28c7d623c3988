#include "common/errors/error_details.h"

#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"

namespace tunefleet::errors {
namespace {

template <typename Message>
std::string TypeUrl() {
  return absl::StrCat(kTypeUrlPrefix, Message::descriptor()->full_name());
}

// Reads the detail of type `Message` (empty message when absent).
template <typename Message>
Message Read(const absl::Status& status) {
  Message message;
  if (auto payload = status.GetPayload(TypeUrl<Message>())) {
    message.ParseFromString(std::string(*payload));
  }
  return message;
}

template <typename Message>
absl::Status Write(absl::Status status, const Message& message) {
  status.SetPayload(TypeUrl<Message>(), absl::Cord(message.SerializeAsString()));
  return status;
}

}  // namespace

absl::Status WithReason(absl::Status status, absl::string_view reason,
                        const std::map<std::string, std::string>& metadata) {
  if (status.ok()) return status;
  auto info = Read<google::rpc::ErrorInfo>(status);
  info.set_reason(std::string(reason));
  info.set_domain(std::string(kDomain));
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  return Write(std::move(status), info);
}

absl::Status WithFieldViolation(absl::Status status, absl::string_view field,
                                absl::string_view description) {
  if (status.ok()) return status;
  auto request = Read<google::rpc::BadRequest>(status);
  auto* violation = request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  return Write(std::move(status), request);
}

absl::Status WithPreconditionViolation(absl::Status status, absl::string_view type,
                                       absl::string_view subject, absl::string_view description) {
  if (status.ok()) return status;
  auto failure = Read<google::rpc::PreconditionFailure>(status);
  auto* violation = failure.add_violations();
  violation->set_type(std::string(type));
  violation->set_subject(std::string(subject));
  violation->set_description(std::string(description));
  return Write(std::move(status), failure);
}

absl::Status WithQuotaViolation(absl::Status status, absl::string_view subject,
                                absl::string_view description) {
  if (status.ok()) return status;
  auto failure = Read<google::rpc::QuotaFailure>(status);
  auto* violation = failure.add_violations();
  violation->set_subject(std::string(subject));
  violation->set_description(std::string(description));
  return Write(std::move(status), failure);
}

absl::Status WithRetryDelay(absl::Status status, absl::Duration delay) {
  if (status.ok()) return status;
  google::rpc::RetryInfo info;
  const int64_t nanos = absl::ToInt64Nanoseconds(delay);
  info.mutable_retry_delay()->set_seconds(nanos / 1000000000);
  info.mutable_retry_delay()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return Write(std::move(status), info);
}

absl::Status FieldError(absl::string_view field, absl::string_view description) {
  return WithReason(
      WithFieldViolation(absl::InvalidArgumentError(absl::StrCat(field, ": ", description)),
                         field, description),
      "INVALID_FIELD");
}

absl::Status InvalidField(absl::string_view field, absl::string_view message) {
  return WithReason(WithFieldViolation(absl::InvalidArgumentError(message), field, message),
                    "INVALID_FIELD");
}

absl::Status InvalidFields(const std::vector<FieldViolation>& violations) {
  std::string message;
  for (const auto& v : violations) {
    absl::StrAppend(&message, message.empty() ? "" : "; ", v.field, ": ", v.description);
  }
  absl::Status status = absl::InvalidArgumentError(message);
  for (const auto& v : violations) status = WithFieldViolation(status, v.field, v.description);
  return WithReason(status, "INVALID_FIELD");
}

Details GetDetails(const absl::Status& status) {
  Details details;
  if (status.ok()) return details;
  const auto info = Read<google::rpc::ErrorInfo>(status);
  details.reason = info.reason();
  details.domain = info.domain();
  details.metadata.insert(info.metadata().begin(), info.metadata().end());
  const auto request = Read<google::rpc::BadRequest>(status);
  for (const auto& v : request.field_violations()) {
    details.field_violations.push_back({v.field(), v.description()});
  }
  const auto precondition = Read<google::rpc::PreconditionFailure>(status);
  for (const auto& v : precondition.violations()) {
    details.precondition_violations.push_back({v.type(), v.subject(), v.description()});
  }
  const auto quota = Read<google::rpc::QuotaFailure>(status);
  for (const auto& v : quota.violations()) {
    details.quota_violations.push_back({v.subject(), v.description()});
  }
  if (status.GetPayload(TypeUrl<google::rpc::RetryInfo>())) {
    const auto retry = Read<google::rpc::RetryInfo>(status);
    details.retry_delay = absl::Seconds(retry.retry_delay().seconds()) +
                          absl::Nanoseconds(retry.retry_delay().nanos());
  }
  return details;
}

std::string DefaultReason(absl::StatusCode code) {
  // absl's names are the google.rpc.Code names in CamelCase-free form
  // ("NOT_FOUND"), which is the reason style ErrorInfo asks for.
  return absl::StatusCodeToString(code);
}

std::vector<std::string> DescribeDetails(const Details& details) {
  std::vector<std::string> lines;
  for (const auto& v : details.field_violations) {
    lines.push_back(absl::StrCat("field ", v.field, ": ", v.description));
  }
  for (const auto& v : details.precondition_violations) {
    const char* what = v.type == "FILE_HELD" ? "held by " : "blocked by ";
    lines.push_back(absl::StrCat(what, v.subject, v.description.empty() ? "" : ": ",
                                 v.description));
  }
  for (const auto& v : details.quota_violations) {
    lines.push_back(absl::StrCat("quota ", v.subject, ": ", v.description));
  }
  if (details.retry_delay) {
    lines.push_back(absl::StrCat("retry after ", absl::FormatDuration(*details.retry_delay)));
  }
  return lines;
}

}  // namespace tunefleet::errors
