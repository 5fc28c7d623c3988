// Structured error details carried on an absl::Status.
//
// Core code says *why* a call failed in a form a program can act on, not
// only in the message: which request fields are wrong (BadRequest), which
// state or resource stands in the way (PreconditionFailure: the job holding
// a file), which quota was hit (QuotaFailure), when to retry (RetryInfo), and
// a stable reason (ErrorInfo). They ride on the status as payloads keyed by
// their google.rpc type URL and cross the one status bridge
// (common/rpc/status.h) into the `grpc-status-details-bin` trailer, where
// every gRPC client's status helpers can read them.
//
// This header includes neither gRPC nor protobuf.
//
//   return errors::WithFieldViolation(
//       absl::InvalidArgumentError("hyperparameters.epochs: must be in [1, 50], got 0"),
//       "hyperparameters.epochs", "must be in [1, 50], got 0");
#pragma once

#include <map>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tunefleet::errors {

inline constexpr absl::string_view kDomain = "tunefleet.dev";
inline constexpr absl::string_view kTypeUrlPrefix = "type.googleapis.com/";

struct FieldViolation {
  std::string field;  // a path into the request: "hyperparameters.epochs"
  std::string description;
  bool operator==(const FieldViolation& o) const {
    return field == o.field && description == o.description;
  }
};

struct PreconditionViolation {
  std::string type;     // what kind of obstacle: "FILE_HELD", "JOB_STATE"
  std::string subject;  // which resource: "ftjob-abc", "file-123"
  std::string description;
  bool operator==(const PreconditionViolation& o) const {
    return type == o.type && subject == o.subject && description == o.description;
  }
};

struct QuotaViolation {
  std::string subject;  // "tenant:acme/max_active_jobs"
  std::string description;
  bool operator==(const QuotaViolation& o) const {
    return subject == o.subject && description == o.description;
  }
};

// Everything a status carries, read back.
struct Details {
  std::string reason;  // empty when none was attached
  std::string domain;
  std::map<std::string, std::string> metadata;
  std::vector<FieldViolation> field_violations;
  std::vector<PreconditionViolation> precondition_violations;
  std::vector<QuotaViolation> quota_violations;
  std::optional<absl::Duration> retry_delay;
};

// Each returns `status` with the detail added (merged into a detail of the
// same kind already there). An OK status is returned unchanged.
absl::Status WithReason(absl::Status status, absl::string_view reason,
                        const std::map<std::string, std::string>& metadata = {});
absl::Status WithFieldViolation(absl::Status status, absl::string_view field,
                                absl::string_view description);
absl::Status WithPreconditionViolation(absl::Status status, absl::string_view type,
                                       absl::string_view subject, absl::string_view description);
absl::Status WithQuotaViolation(absl::Status status, absl::string_view subject,
                                absl::string_view description);
absl::Status WithRetryDelay(absl::Status status, absl::Duration delay);

// INVALID_ARGUMENT "<field>: <description>" with the field violation and
// reason INVALID_FIELD: the common case in one call.
absl::Status FieldError(absl::string_view field, absl::string_view description);

// INVALID_ARGUMENT with `message` as it is (it names the field in its own
// words), the field violation {field, message} and reason INVALID_FIELD.
absl::Status InvalidField(absl::string_view field, absl::string_view message);

// INVALID_ARGUMENT naming every bad field ("a: why; b: why"), one field
// violation each, reason INVALID_FIELD. `violations` must not be empty.
absl::Status InvalidFields(const std::vector<FieldViolation>& violations);

// Reads the details back (from core code, tests, or a status that crossed
// the bridge with rpc::FromGrpcStatus).
Details GetDetails(const absl::Status& status);

// The reason a status has when none was attached: the code's name
// ("NOT_FOUND", "FAILED_PRECONDITION", ...).
std::string DefaultReason(absl::StatusCode code);

// The details in plain words, one line each, for people (the CLI):
//   field hyperparameters.epochs: must be in [1, 50], got 0
//   held by ftjob-abc: the job is running
//   quota tenant:acme/max_active_jobs: 2 of 2 in use
//   retry after 5s
// Empty when there is nothing beyond the message.
std::vector<std::string> DescribeDetails(const Details& details);

}  // namespace tunefleet::errors
