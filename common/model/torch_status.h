// Turns libtorch exceptions into absl::Status at a library boundary, so none
// escapes to callers. The model library and the training worker use it (the
// one copy). Out of memory (c10::OutOfMemoryError, thrown by the CUDA and
// CPU allocators, or std::bad_alloc) is RESOURCE_EXHAUSTED, not INTERNAL:
// callers act on it (a smaller batch, a request that waits).
#pragma once

#include <c10/util/Exception.h>

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tunefleet::model::internal {

// Runs `fn` (returning absl::Status or absl::StatusOr<T>); a thrown exception
// becomes an error prefixed with `what` (c10::Error's message without its
// backtrace): RESOURCE_EXHAUSTED for out of memory, INTERNAL otherwise.
template <typename Fn>
auto CatchTorch(absl::string_view what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {  // derives from c10::Error: first
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

}  // namespace tunefleet::model::internal
