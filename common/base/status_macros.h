// Early-return helpers for absl::Status / absl::StatusOr code.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TF_CONCAT_INNER_(a, b) a##b
#define TF_CONCAT_(a, b) TF_CONCAT_INNER_(a, b)

// Returns `expr` from the enclosing function when it is not OK.
#define TF_RETURN_IF_ERROR(expr)                \
  do {                                          \
    ::absl::Status tf_status_ = (expr);         \
    if (!tf_status_.ok()) return tf_status_;    \
  } while (0)

// `TF_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from an OK StatusOr or
// returns its status.
#define TF_ASSIGN_OR_RETURN(lhs, rexpr) \
  TF_ASSIGN_OR_RETURN_IMPL_(TF_CONCAT_(tf_statusor_, __LINE__), lhs, rexpr)
#define TF_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()
