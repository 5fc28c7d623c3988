#include "common/base/ids.h"

#include <random>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"

namespace tunefleet {
namespace {
constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
}  // namespace

std::string NewId(absl::string_view prefix) {
  static absl::Mutex mu(absl::kConstInit);
  static std::random_device* device = new std::random_device();
  std::string id(prefix);
  id.push_back('-');
  absl::MutexLock lock(&mu);
  for (int i = 0; i < 24; ++i) id.push_back(kAlphabet[(*device)() % 32]);
  return id;
}

bool HasIdPrefix(absl::string_view id, absl::string_view prefix) {
  if (!absl::StartsWith(id, prefix) || id.size() <= prefix.size() + 1 ||
      id[prefix.size()] != '-') {
    return false;
  }
  absl::string_view rest = id.substr(prefix.size() + 1);
  if (rest.size() > 64) return false;
  for (char c : rest) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace tunefleet
