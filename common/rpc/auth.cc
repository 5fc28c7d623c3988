#include "common/rpc/auth.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/sha256.h"

namespace tunefleet::rpc {
namespace {

bool IsHex64(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::string_view Header(const grpc::ServerContextBase& context, absl::string_view name) {
  const auto& md = context.client_metadata();
  auto it = md.find(grpc::string_ref(name.data(), name.size()));
  if (it == md.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

absl::StatusOr<std::shared_ptr<const KeyRing>> KeyRing::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("keys file ", path, " cannot be read"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str(), path);
}

absl::StatusOr<std::shared_ptr<const KeyRing>> KeyRing::Parse(absl::string_view text,
                                                              absl::string_view source) {
  auto ring = std::shared_ptr<KeyRing>(new KeyRing());
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", line_no, ": ", why));
    };
    if (fields.size() < 2 || fields.size() > 4) {
      return bad("expected '<sha256-hex> <tenant> [tenant|internal] [name]'");
    }
    std::string digest = absl::AsciiStrToLower(fields[0]);
    if (!IsHex64(digest)) return bad("the first field must be a 64-digit hex SHA-256 digest");
    Principal p;
    p.tenant = std::string(fields[1]);
    if (fields.size() >= 3) {
      if (fields[2] == "internal") {
        p.role = Role::kInternal;
      } else if (fields[2] != "tenant") {
        return bad(absl::StrCat("unknown role '", fields[2], "' (want tenant or internal)"));
      }
    }
    p.key_name = fields.size() == 4 ? std::string(fields[3]) : absl::StrCat("line-", line_no);
    if (p.role == Role::kInternal) p.tenant.clear();
    if (!ring->by_digest_.emplace(digest, std::move(p)).second) {
      return bad("duplicate key digest");
    }
  }
  return std::shared_ptr<const KeyRing>(std::move(ring));
}

absl::StatusOr<Principal> KeyRing::Lookup(absl::string_view key) const {
  auto it = by_digest_.find(Sha256Hex(key));
  if (it == by_digest_.end()) return absl::UnauthenticatedError("invalid API key");
  return it->second;
}

absl::StatusOr<Principal> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  absl::string_view header = Header(context, "authorization");
  if (header.empty()) {
    return absl::UnauthenticatedError(
        "missing credentials: send the metadata 'authorization: Bearer <api key>'");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(header, kBearer) || header.size() == kBearer.size()) {
    return absl::UnauthenticatedError("malformed authorization metadata: expected 'Bearer <api key>'");
  }
  auto principal = keys_->Lookup(absl::StripAsciiWhitespace(header.substr(kBearer.size())));
  if (!principal.ok()) return principal.status();
  if (principal->internal()) principal->tenant = std::string(Header(context, kOnBehalfOfHeader));
  return principal;
}

absl::StatusOr<Principal> Authenticator::AuthenticateInternal(
    const grpc::ServerContextBase& context) const {
  auto principal = Authenticate(context);
  if (principal.ok() && !principal->internal()) {
    return absl::PermissionDeniedError(
        "this method is internal to Tunefleet: call it with the internal service credential");
  }
  return principal;
}

absl::StatusOr<Principal> Authenticator::AuthenticateTenant(
    const grpc::ServerContextBase& context) const {
  auto principal = Authenticate(context);
  if (principal.ok() && principal->tenant.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the internal credential must name the tenant it acts for in '", kOnBehalfOfHeader, "'"));
  }
  return principal;
}

absl::Status CheckOwner(const Principal& caller, absl::string_view owner_tenant,
                        absl::string_view kind, absl::string_view id) {
  // An internal caller that names no tenant (a trainer fetching a job's
  // files, say) acts for the platform and may read any tenant's resources.
  if (caller.scope().Covers(owner_tenant)) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat(kind, " ", id, " not found"));
}

}  // namespace tunefleet::rpc
