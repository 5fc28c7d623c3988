// Checks of the public deployment API that need no scheduler state: the
// user-chosen deployment id and the content filter policy (rules, custom
// blocklists whose regular expressions must compile with RE2, the classifier
// error policy, a classifier_deployment exclusive with classifier_endpoint
// and its classifier_labels mapping to classifier categories). Errors are
// INVALID_ARGUMENT with the field violation
// (`<prefix>content_filter.blocklists[i].regexes[j]` and RE2's message).
// Also the checks of classifier_deployment against the deployments that
// exist, given a lookup of the caller's deployments.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tunefleet/v1/deployments.pb.h"

namespace tunefleet::scheduler {

// [a-z][a-z0-9-]{0,62}: a letter first, then lowercase letters, digits and
// '-' (at most 63 characters in all). `field` names it in the error.
absl::Status ValidateDeploymentId(absl::string_view id, absl::string_view field);

// `prefix`: "" for CreateDeployment, "deployment." for UpdateDeployment.
absl::Status ValidateContentFilter(const v1::ContentFilterPolicy& policy, absl::string_view prefix);

// What a content filter policy may know of another deployment of its tenant.
struct DeploymentInfo {
  std::string model;
  // Its model was fine-tuned with the classification task.
  bool classification = false;
};
// The caller's deployment with that id; nullopt when there is none (another
// tenant's deployment is none too: its existence is never told).
using FindTenantDeployment =
    absl::FunctionRef<std::optional<DeploymentInfo>(const std::string& id)>;

// policy.classifier_deployment (when set, already syntax-checked by
// ValidateContentFilter) must name another existing deployment of the caller
// that serves a classification model. `self_id`: the deployment the policy
// belongs to. INVALID_ARGUMENT on `<prefix>content_filter.classifier_deployment`
// naming the id.
absl::Status CheckClassifierDeployment(const v1::ContentFilterPolicy& policy,
                                       absl::string_view self_id, absl::string_view prefix,
                                       FindTenantDeployment find);

// FAILED_PRECONDITION (reason CLASSIFIER_IN_USE, a precondition violation
// per dependent) when `dependents` (the caller's deployments whose policy
// names `id` as classifier_deployment) is not empty; `what` says what
// was refused ("deployment x cannot be deleted").
absl::Status ClassifierInUse(const std::string& id, const std::vector<std::string>& dependents,
                             absl::string_view what);

}  // namespace tunefleet::scheduler
