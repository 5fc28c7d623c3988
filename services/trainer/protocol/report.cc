#include "services/trainer/protocol/report.h"

#include <errno.h>
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::trainer {
namespace {

using nlohmann::json;

constexpr std::pair<ReportKind, const char*> kKinds[] = {
    {ReportKind::kStarted, "started"},     {ReportKind::kProgress, "progress"},
    {ReportKind::kEval, "eval"},           {ReportKind::kCheckpoint, "checkpoint"},
    {ReportKind::kCompleted, "completed"}, {ReportKind::kStopped, "stopped"},
    {ReportKind::kError, "error"}};

void PutOpt(json& j, const char* key, const std::optional<double>& v) {
  if (v && std::isfinite(*v)) j[key] = *v;
}

absl::Status Bad(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("report line: ", key, ": ", what));
}

absl::Status GetInt(const json& j, const char* key, int64_t& out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  if (!it->is_number_integer()) return Bad(key, "must be an integer");
  out = it->get<int64_t>();
  return absl::OkStatus();
}
absl::Status GetNum(const json& j, const char* key, double& out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  if (!it->is_number()) return Bad(key, "must be a number");
  out = it->get<double>();
  return absl::OkStatus();
}
absl::Status GetOpt(const json& j, const char* key, std::optional<double>& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Bad(key, "must be a number");
  out = it->get<double>();
  return absl::OkStatus();
}
absl::Status GetStr(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  if (!it->is_string()) return Bad(key, "must be a string");
  out = it->get<std::string>();
  return absl::OkStatus();
}

}  // namespace

absl::string_view ReportKindName(ReportKind k) {
  for (const auto& [kind, name] : kKinds)
    if (kind == k) return name;
  return "unknown";
}

std::string FormatReportLine(const ReportEvent& e) {
  json j;
  j["event"] = ReportKindName(e.kind);
  switch (e.kind) {
    case ReportKind::kStarted:
      j["total_steps"] = e.total_steps;
      j["world_size"] = e.world_size;
      j["rank"] = e.rank;
      j["resumed_step"] = e.resumed_step;
      break;
    case ReportKind::kProgress:
      j["step"] = e.step;
      j["total_steps"] = e.total_steps;
      j["epoch"] = e.epoch;
      PutOpt(j, "train_loss", e.train_loss);
      PutOpt(j, "train_token_accuracy", e.train_token_accuracy);
      PutOpt(j, "learning_rate", e.learning_rate);
      PutOpt(j, "tokens_per_second", e.tokens_per_second);
      PutOpt(j, "eta_seconds", e.eta_seconds);
      j["trained_tokens"] = e.trained_tokens;
      break;
    case ReportKind::kEval:
      j["step"] = e.step;
      j["epoch"] = e.epoch;
      PutOpt(j, "valid_loss", e.valid_loss);
      PutOpt(j, "valid_token_accuracy", e.valid_token_accuracy);
      break;
    case ReportKind::kCheckpoint:
      j["step"] = e.step;
      j["epoch"] = e.epoch;
      j["dir"] = e.checkpoint_dir;
      break;
    case ReportKind::kCompleted:
      j["result_dir"] = e.result_dir;
      j["trained_tokens"] = e.trained_tokens;
      j["step"] = e.step;
      PutOpt(j, "valid_loss", e.valid_loss);
      PutOpt(j, "valid_token_accuracy", e.valid_token_accuracy);
      PutOpt(j, "base_valid_loss", e.base_valid_loss);
      if (e.stopped_early) j["stopped_early"] = true;
      break;
    case ReportKind::kStopped:
      j["step"] = e.step;
      j["checkpoint_dir"] = e.checkpoint_dir;
      break;
    case ReportKind::kError:
      j["code"] = e.code;
      j["message"] = e.message;
      break;
  }
  if (e.kind == ReportKind::kCheckpoint || e.kind == ReportKind::kCompleted ||
      ((e.kind == ReportKind::kProgress || e.kind == ReportKind::kEval) && !e.metrics.empty())) {
    json m = json::object();
    for (const auto& [k, v] : e.metrics)
      if (std::isfinite(v)) m[k] = v;
    j["metrics"] = std::move(m);
  }
  // Invalid UTF-8 in a message (a path) is replaced rather than thrown on.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<ReportEvent> ParseReportLine(absl::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError("report line: not a JSON object");
  ReportEvent e;
  std::string name;
  TF_RETURN_IF_ERROR(GetStr(j, "event", name));
  bool known = false;
  for (const auto& [kind, n] : kKinds) {
    if (name == n) {
      e.kind = kind;
      known = true;
    }
  }
  if (!known) return Bad("event", absl::StrCat("unknown event '", name, "'"));
  TF_RETURN_IF_ERROR(GetInt(j, "step", e.step));
  TF_RETURN_IF_ERROR(GetInt(j, "total_steps", e.total_steps));
  TF_RETURN_IF_ERROR(GetNum(j, "epoch", e.epoch));
  TF_RETURN_IF_ERROR(GetInt(j, "world_size", e.world_size));
  TF_RETURN_IF_ERROR(GetInt(j, "rank", e.rank));
  TF_RETURN_IF_ERROR(GetInt(j, "resumed_step", e.resumed_step));
  TF_RETURN_IF_ERROR(GetOpt(j, "train_loss", e.train_loss));
  TF_RETURN_IF_ERROR(GetOpt(j, "train_token_accuracy", e.train_token_accuracy));
  TF_RETURN_IF_ERROR(GetOpt(j, "learning_rate", e.learning_rate));
  TF_RETURN_IF_ERROR(GetOpt(j, "tokens_per_second", e.tokens_per_second));
  TF_RETURN_IF_ERROR(GetOpt(j, "eta_seconds", e.eta_seconds));
  TF_RETURN_IF_ERROR(GetInt(j, "trained_tokens", e.trained_tokens));
  TF_RETURN_IF_ERROR(GetOpt(j, "valid_loss", e.valid_loss));
  TF_RETURN_IF_ERROR(GetOpt(j, "valid_token_accuracy", e.valid_token_accuracy));
  TF_RETURN_IF_ERROR(GetOpt(j, "base_valid_loss", e.base_valid_loss));
  TF_RETURN_IF_ERROR(GetStr(j, e.kind == ReportKind::kCheckpoint ? "dir" : "checkpoint_dir",
                       e.checkpoint_dir));
  TF_RETURN_IF_ERROR(GetStr(j, "result_dir", e.result_dir));
  if (auto se = j.find("stopped_early"); se != j.end()) {
    if (!se->is_boolean()) return Bad("stopped_early", "must be a boolean");
    e.stopped_early = se->get<bool>();
  }
  TF_RETURN_IF_ERROR(GetStr(j, "code", e.code));
  TF_RETURN_IF_ERROR(GetStr(j, "message", e.message));
  auto m = j.find("metrics");
  if (m != j.end()) {
    if (!m->is_object()) return Bad("metrics", "must be an object");
    for (auto it = m->begin(); it != m->end(); ++it) {
      if (!it.value().is_number()) return Bad(absl::StrCat("metrics.", it.key()), "must be a number");
      e.metrics[it.key()] = it.value().get<double>();
    }
  }
  if (e.kind == ReportKind::kError && e.code.empty()) return Bad("code", "missing");
  return e;
}

ReportEvent ErrorEvent(const absl::Status& status) {
  ReportEvent e;
  e.kind = ReportKind::kError;
  e.code = absl::StatusCodeToString(status.code());
  e.message = std::string(status.message());
  return e;
}

absl::StatusCode ParseStatusCode(absl::string_view name) {
  for (int c = 0; c <= 16; ++c) {
    auto code = static_cast<absl::StatusCode>(c);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return absl::StatusCode::kUnknown;
}

absl::Status ReportWriter::Write(const ReportEvent& event) {
  if (fd_ < 0) return absl::OkStatus();
  std::string line = FormatReportLine(event);
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(mu_);
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) return absl::OkStatus();
      return absl::UnavailableError(absl::StrCat("report fd ", fd_, ": write failed, errno ", errno));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::vector<std::string> ReportLineSplitter::Add(absl::string_view bytes) {
  pending_.append(bytes.data(), bytes.size());
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.emplace_back(pending_, start, nl - start);
  pending_.erase(0, start);
  return lines;
}

std::string ReportLineSplitter::TakeRest() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace tunefleet::trainer
