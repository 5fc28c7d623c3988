// Test certificates made at test time with the openssl command: a CA, a
// server certificate for 127.0.0.1/localhost and a client certificate.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace tunefleet::testing {

struct TestPki {
  std::string ca_cert, ca_key;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
};

// Writes a fresh PKI into `dir` (files named <name>.pem / <name>.key).
absl::StatusOr<TestPki> MakeTestPki(const std::string& dir, const std::string& name);

}  // namespace tunefleet::testing
