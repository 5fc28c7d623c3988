#include "common/rpc/keys.h"

#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/base/sha256.h"

namespace tunefleet::rpc {

NewKey GenerateKey(absl::string_view tenant, Role role, absl::string_view name) {
  std::random_device rd;
  std::string raw(32, '\0');
  for (char& c : raw) c = static_cast<char>(rd() & 0xff);
  NewKey out;
  out.key = absl::StrCat("tfk-", absl::WebSafeBase64Escape(raw));
  out.line = absl::StrCat(Sha256Hex(out.key), " ", tenant.empty() ? "-" : tenant, " ",
                          role == Role::kInternal ? "internal" : "tenant", " ",
                          name.empty() ? "key" : name);
  return out;
}

}  // namespace tunefleet::rpc
