// Checks of the public deployment API that need no scheduler state: the
// user-chosen deployment id and the content filter policy (rules, custom
// blocklists whose regular expressions must compile with RE2, the classifier
// error policy, a classifier_deployment exclusive with classifier_endpoint
// and its classifier_labels mapping to classifier categories). Errors are
// INVALID_ARGUMENT with the field violation
// (`<prefix>content_filter.blocklists[i].regexes[j]` and RE2's message).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tunefleet/v1/deployments.pb.h"

namespace tunefleet::scheduler {

// [a-z][a-z0-9-]{0,62}: a letter first, then lowercase letters, digits and
// '-' (at most 63 characters in all). `field` names it in the error.
absl::Status ValidateDeploymentId(absl::string_view id, absl::string_view field);

// `prefix`: "" for CreateDeployment, "deployment." for UpdateDeployment.
absl::Status ValidateContentFilter(const v1::ContentFilterPolicy& policy, absl::string_view prefix);

}  // namespace tunefleet::scheduler
