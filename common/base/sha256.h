// Incremental SHA-256 (OpenSSL), for uploads hashed on the way in.
#pragma once

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace tunefleet {

// Not thread-safe; one per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data);
  // Lowercase hex digest; the object must not be updated afterwards.
  std::string HexDigest();
  // The digest of what was hashed so far; hashing may go on.
  std::string PeekHexDigest() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One-shot helper.
std::string Sha256Hex(absl::string_view data);

}  // namespace tunefleet
