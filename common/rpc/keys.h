// API keys as a client or an operator makes them: who a key acts as (Role)
// and new random keys with the keys-file line that stores their digest (the
// server side, KeyRing and Authenticator, is in auth.h). gRPC-free.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tunefleet::rpc {

enum class Role { kTenant, kInternal };

// A new random key ("tfk-" + 43 url-safe base64 characters) and the keys-file
// line that stores its digest.
struct NewKey {
  std::string key;
  std::string line;
};
NewKey GenerateKey(absl::string_view tenant, Role role, absl::string_view name);

}  // namespace tunefleet::rpc
