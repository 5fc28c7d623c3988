// API-key authentication. Callers send `authorization: Bearer <key>`; keys are
// stored only as SHA-256 digests and resolve to a principal: a tenant, or the
// internal service identity used between Tunefleet services.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/server_context.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/base/scope.h"
#include "common/rpc/keys.h"

namespace tunefleet::rpc {

struct Principal {
  std::string tenant;  // for kInternal: the tenant acted for, if any
  Role role = Role::kTenant;
  std::string key_name;
  bool internal() const { return role == Role::kInternal; }
  // What the caller may see: its tenant, or the platform for an internal
  // caller that names no tenant.
  Scope scope() const { return internal() && tenant.empty() ? Scope::Platform() : Scope::Tenant(tenant); }
};

// Internal callers act for a tenant by naming it in this header.
inline constexpr char kOnBehalfOfHeader[] = "x-tunefleet-tenant";

// An immutable set of key digests. Thread-safe (read-only after load).
//
// Keys file format, one key per line ('#' starts a comment):
//   <sha256-hex-of-key> <tenant> [tenant|internal] [name]
// Keys are 256-bit random tokens, so a plain SHA-256 is a sufficient
// one-way digest (no password-style stretching is needed).
class KeyRing {
 public:
  static absl::StatusOr<std::shared_ptr<const KeyRing>> LoadFile(const std::string& path);
  static absl::StatusOr<std::shared_ptr<const KeyRing>> Parse(absl::string_view text,
                                                              absl::string_view source);
  // Looks up a presented key (the clear text from the request).
  absl::StatusOr<Principal> Lookup(absl::string_view key) const;
  size_t size() const { return by_digest_.size(); }

 private:
  absl::flat_hash_map<std::string, Principal> by_digest_;
};

// Role, NewKey and GenerateKey: common/rpc/keys.h.

// Authenticates every call of a service. Thread-safe.
class Authenticator {
 public:
  explicit Authenticator(std::shared_ptr<const KeyRing> keys) : keys_(std::move(keys)) {}

  // UNAUTHENTICATED when the header is missing, malformed or the key is
  // unknown. Internal callers get the tenant named in kOnBehalfOfHeader.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context) const;
  // Like Authenticate, and PERMISSION_DENIED unless the caller is internal.
  absl::StatusOr<Principal> AuthenticateInternal(const grpc::ServerContextBase& context) const;
  // Like Authenticate, and PERMISSION_DENIED unless a tenant is known (a
  // tenant key, or an internal key acting for a tenant).
  absl::StatusOr<Principal> AuthenticateTenant(const grpc::ServerContextBase& context) const;

 private:
  std::shared_ptr<const KeyRing> keys_;
};

// Ownership check for tenant resources: another tenant's resource is
// reported exactly like a missing one (NOT_FOUND), so that ids never leak.
absl::Status CheckOwner(const Principal& caller, absl::string_view owner_tenant,
                        absl::string_view kind, absl::string_view id);

}  // namespace tunefleet::rpc
