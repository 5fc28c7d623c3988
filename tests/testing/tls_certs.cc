#include "tests/testing/tls_certs.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace tunefleet::testing {
namespace {

absl::Status Run(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  if (rc != 0) return absl::InternalError(absl::StrCat("command failed (", rc, "): ", cmd));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TestPki> MakeTestPki(const std::string& dir, const std::string& name) {
  TestPki p;
  std::string base = absl::StrCat(dir, "/", name);
  p.ca_cert = base + "-ca.pem";
  p.ca_key = base + "-ca.key";
  p.server_cert = base + "-server.pem";
  p.server_key = base + "-server.key";
  p.client_cert = base + "-client.pem";
  p.client_key = base + "-client.key";
  std::string ext = base + "-san.ext";
  {
    std::ofstream out(ext);
    out << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  }
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  absl::Status s = Run(absl::StrCat("openssl req -x509 ", ec, " -keyout ", p.ca_key, " -out ",
                                    p.ca_cert, " -days 2 -subj /CN=", name, "-ca"));
  if (!s.ok()) return s;
  for (auto [cert, key, cn, extra] :
       {std::tuple{p.server_cert, p.server_key, std::string("localhost"),
                   absl::StrCat(" -extfile ", ext)},
        std::tuple{p.client_cert, p.client_key, std::string("tunefleet-client"), std::string()}}) {
    std::string csr = cert + ".csr";
    s = Run(absl::StrCat("openssl req ", ec, " -keyout ", key, " -out ", csr, " -subj /CN=", cn));
    if (!s.ok()) return s;
    s = Run(absl::StrCat("openssl x509 -req -in ", csr, " -CA ", p.ca_cert, " -CAkey ", p.ca_key,
                         " -CAcreateserial -out ", cert, " -days 2", extra));
    if (!s.ok()) return s;
  }
  return p;
}

}  // namespace tunefleet::testing
