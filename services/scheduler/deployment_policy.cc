#include "services/scheduler/deployment_policy.h"

#include <re2/re2.h>

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/errors/error_details.h"

namespace tunefleet::scheduler {
namespace {

constexpr int kMaxBlocklists = 32;
constexpr int kMaxTerms = 10000;
constexpr int kMaxRegexes = 256;
constexpr size_t kMaxEntryBytes = 1024;

bool ValidListName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateDeploymentId(absl::string_view id, absl::string_view field) {
  bool ok = !id.empty() && id.size() <= 63 && id[0] >= 'a' && id[0] <= 'z';
  for (char c : id) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
  if (ok) return absl::OkStatus();
  return errors::FieldError(
      field, absl::StrCat("'", id,
                          "' is not a deployment id: 1 to 63 characters of [a-z0-9-], starting "
                          "with a letter"));
}

absl::Status ValidateContentFilter(const v1::ContentFilterPolicy& policy,
                                   absl::string_view prefix) {
  const std::string p = absl::StrCat(prefix, "content_filter.");
  std::vector<errors::FieldViolation> bad;
  for (int i = 0; i < policy.rules_size(); ++i) {
    const auto& r = policy.rules(i);
    if (!v1::ContentFilterCategory_IsValid(r.category()) ||
        r.category() == v1::CONTENT_FILTER_CATEGORY_UNSPECIFIED)
      bad.push_back({absl::StrCat(p, "rules[", i, "].category"), "required"});
    if (!v1::Severity_IsValid(r.threshold()))
      bad.push_back({absl::StrCat(p, "rules[", i, "].threshold"), "unknown value"});
    if (!v1::ContentFilterAction_IsValid(r.action()))
      bad.push_back({absl::StrCat(p, "rules[", i, "].action"), "unknown value"});
  }
  if (!v1::ClassifierErrorPolicy_IsValid(policy.on_classifier_error()))
    bad.push_back({absl::StrCat(p, "on_classifier_error"), "unknown value"});
  if (policy.blocklists_size() > kMaxBlocklists) {
    bad.push_back({absl::StrCat(p, "blocklists"), absl::StrCat("at most ", kMaxBlocklists, " lists")});
  }
  std::set<std::string> names;
  int terms = 0, regexes = 0;
  for (int i = 0; i < policy.blocklists_size(); ++i) {
    const v1::Blocklist& b = policy.blocklists(i);
    const std::string bp = absl::StrCat(p, "blocklists[", i, "]");
    if (!ValidListName(b.name())) {
      bad.push_back({bp + ".name", "1 to 64 characters of [A-Za-z0-9_.-]"});
    } else if (!names.insert(b.name()).second) {
      bad.push_back({bp + ".name", absl::StrCat("'", b.name(), "' names two lists")});
    }
    if (b.terms_size() == 0 && b.regexes_size() == 0)
      bad.push_back({bp, "a blocklist needs terms or regexes"});
    for (int j = 0; j < b.terms_size(); ++j) {
      const std::string& t = b.terms(j);
      if (t.empty() || t.size() > kMaxEntryBytes) {
        bad.push_back({absl::StrCat(bp, ".terms[", j, "]"),
                       absl::StrCat("1 to ", kMaxEntryBytes, " bytes")});
      }
    }
    for (int j = 0; j < b.regexes_size(); ++j) {
      const std::string& re = b.regexes(j);
      const std::string field = absl::StrCat(bp, ".regexes[", j, "]");
      if (re.empty() || re.size() > kMaxEntryBytes) {
        bad.push_back({field, absl::StrCat("1 to ", kMaxEntryBytes, " bytes")});
        continue;
      }
      // The options the serving replica compiles them with.
      re2::RE2 compiled(re, re2::RE2::Quiet);
      if (!compiled.ok()) {
        bad.push_back({field, absl::StrCat("\"", re, "\" does not compile: ", compiled.error())});
      }
    }
    terms += b.terms_size();
    regexes += b.regexes_size();
  }
  // A classification deployment as the classifier, its labels' categories.
  if (!policy.classifier_deployment().empty()) {
    if (!policy.classifier_endpoint().empty()) {
      bad.push_back({absl::StrCat(p, "classifier_deployment"),
                     "classifier_endpoint and classifier_deployment are exclusive: name one"});
    }
    if (!ValidateDeploymentId(policy.classifier_deployment(), "classifier_deployment").ok()) {
      bad.push_back({absl::StrCat(p, "classifier_deployment"),
                     absl::StrCat("'", policy.classifier_deployment(), "' is not a deployment id")});
    }
  } else if (policy.classifier_labels_size() > 0) {
    bad.push_back({absl::StrCat(p, "classifier_labels"),
                   "labels map a classifier_deployment's labels: name the deployment"});
  }
  std::set<std::string> labels;
  for (int i = 0; i < policy.classifier_labels_size(); ++i) {
    const v1::ClassifierLabel& l = policy.classifier_labels(i);
    const std::string lp = absl::StrCat(p, "classifier_labels[", i, "]");
    if (l.label().empty() || l.label().size() > 128) {
      bad.push_back({lp + ".label", "1 to 128 bytes"});
    } else if (!labels.insert(l.label()).second) {
      bad.push_back({lp + ".label", absl::StrCat("'", l.label(), "' is mapped twice")});
    }
    // The categories a classifier reports (PII and BLOCKLIST are the
    // built-in detectors' findings).
    if (l.category() < v1::CONTENT_FILTER_CATEGORY_HATE ||
        l.category() > v1::CONTENT_FILTER_CATEGORY_PROFANITY) {
      bad.push_back({lp + ".category",
                     "one of HATE, SEXUAL, VIOLENCE, SELF_HARM, JAILBREAK, PROFANITY"});
    }
  }
  if (terms > kMaxTerms)
    bad.push_back({absl::StrCat(p, "blocklists"), absl::StrCat("at most ", kMaxTerms, " terms in all")});
  if (regexes > kMaxRegexes) {
    bad.push_back({absl::StrCat(p, "blocklists"),
                   absl::StrCat("at most ", kMaxRegexes, " regexes in all")});
  }
  if (bad.empty()) return absl::OkStatus();
  return errors::InvalidFields(bad);
}

absl::Status CheckClassifierDeployment(const v1::ContentFilterPolicy& policy,
                                       absl::string_view self_id, absl::string_view prefix,
                                       FindTenantDeployment find) {
  const std::string& id = policy.classifier_deployment();
  if (id.empty()) return absl::OkStatus();
  const std::string field = absl::StrCat(prefix, "content_filter.classifier_deployment");
  if (id == self_id) {
    return errors::FieldError(
        field, absl::StrCat("'", id, "' is this deployment; a deployment cannot be its own "
                            "classifier"));
  }
  std::optional<DeploymentInfo> found = find(id);
  if (!found) {
    return errors::FieldError(
        field, absl::StrCat("deployment '", id, "' not found; name one of your deployments"));
  }
  if (!found->classification) {
    return errors::FieldError(
        field, absl::StrCat("deployment '", id, "' serves ", found->model,
                            ", which is not a classification model (fine-tune one with the "
                            "classification task)"));
  }
  return absl::OkStatus();
}

absl::Status ClassifierInUse(const std::string& id, const std::vector<std::string>& dependents,
                             absl::string_view what) {
  if (dependents.empty()) return absl::OkStatus();
  absl::Status s = errors::WithReason(
      absl::FailedPreconditionError(absl::StrCat(
          what, ": it is the content classifier of deployment ", absl::StrJoin(dependents, ", "),
          " (content_filter.classifier_deployment); change or delete that deployment first")),
      "CLASSIFIER_IN_USE", {{"deployment_id", id}});
  for (const std::string& d : dependents) {
    s = errors::WithPreconditionViolation(s, "CLASSIFIER_IN_USE", d,
                                          "its content filter uses this deployment as classifier");
  }
  return s;
}

}  // namespace tunefleet::scheduler
