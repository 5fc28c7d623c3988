// Whose resources a call may see: one tenant, or the platform (Tunefleet's
// own services acting for no tenant, e.g. a trainer fetching a job's files).
//
// "Every tenant" is never spelled as an empty tenant string: a Scope is made
// on purpose, by the auth layer (rpc::Principal::scope()) or by code that
// states it acts for the platform. A tenant scope with an empty name covers
// nothing, so a missing tenant narrows instead of widening.
#pragma once

#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace tunefleet {

class Scope {
 public:
  static Scope Tenant(std::string tenant) { return Scope(false, std::move(tenant)); }
  static Scope Platform() { return Scope(true, ""); }

  bool platform() const { return platform_; }
  // The tenant of a tenant scope; empty for the platform.
  const std::string& tenant() const { return tenant_; }
  // Whether a resource owned by `owner` is visible in this scope.
  bool Covers(absl::string_view owner) const {
    return platform_ || (!tenant_.empty() && owner == tenant_);
  }
  std::string ToString() const { return platform_ ? "platform" : "tenant:" + tenant_; }

 private:
  Scope(bool platform, std::string tenant) : platform_(platform), tenant_(std::move(tenant)) {}
  bool platform_;
  std::string tenant_;
};

}  // namespace tunefleet
