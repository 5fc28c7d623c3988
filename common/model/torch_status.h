// Internal to the model library: turns libtorch exceptions into absl::Status
// at the library boundary, so none escapes to callers.
#pragma once

#include <c10/util/Exception.h>

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tunefleet::model::internal {

// Runs `fn` (returning absl::Status or absl::StatusOr<T>); a thrown exception
// becomes an Internal error prefixed with `what` (c10::Error's message without
// its backtrace).
template <typename Fn>
auto CatchTorch(absl::string_view what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

}  // namespace tunefleet::model::internal
