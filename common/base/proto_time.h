// absl::Time <-> google.protobuf.Timestamp, the API's one time type. Header
// only: it needs protobuf (libprotobuf, which every target that speaks the
// generated messages links through tunefleet_proto), neither gRPC nor the
// rest of common/base.
#pragma once

#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>

#include "absl/time/time.h"

namespace tunefleet {

// To the microsecond (absl::Time's finer part is dropped); times before 1970
// keep nanos non-negative, as Timestamp requires.
inline google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  return google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

inline absl::Time FromTimestamp(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace tunefleet
