#include "common/base/ids.h"

#include "absl/random/random.h"
#include "absl/random/uniform_int_distribution.h"
#include "absl/strings/match.h"

namespace tunefleet {
namespace {
constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
}  // namespace

std::string NewId(absl::string_view prefix) {
  // One generator per thread, seeded from the OS's entropy when the thread
  // first makes an id: no lock and no system call per id (reading
  // std::random_device 24 times under a mutex cost the scheduler's
  // CreateJob path a measurable share of its CPU). 24 characters of 5 bits
  // keep 120 random bits; ids name things, they are not secrets (every read
  // is checked against the caller's tenant).
  thread_local absl::BitGen gen;
  std::string id(prefix);
  id.reserve(prefix.size() + 25);
  id.push_back('-');
  for (int i = 0; i < 24; ++i) id.push_back(kAlphabet[absl::Uniform(gen, 0u, 32u)]);
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
