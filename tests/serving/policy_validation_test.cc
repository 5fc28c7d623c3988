// The deployment API's check of a content filter policy's classifier
// deployment (services/scheduler/deployment_policy.cc, compiled in here):
// exclusive with classifier_endpoint, a deployment id, labels only beside
// it, each label once and mapped to a classifier category.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/errors/error_details.h"
#include "services/scheduler/deployment_policy.h"

namespace tunefleet::scheduler {
namespace {

using ::testing::HasSubstr;

v1::ContentFilterPolicy WithClassifier(const std::string& deployment) {
  v1::ContentFilterPolicy p;
  p.set_classifier_deployment(deployment);
  auto* l = p.add_classifier_labels();
  l->set_label("violence");
  l->set_category(v1::CONTENT_FILTER_CATEGORY_VIOLENCE);
  return p;
}

std::string Violations(const absl::Status& s) {
  std::string out;
  for (const auto& v : errors::GetDetails(s).field_violations) out += v.field + ": " + v.description + "\n";
  return out;
}

TEST(PolicyValidationTest, AClassifierDeploymentWithMappedLabelsIsValid) {
  EXPECT_TRUE(ValidateContentFilter(WithClassifier("dep-guard"), "").ok());
  v1::ContentFilterPolicy p;
  p.set_classifier_deployment("dep-guard");  // labels mapped by name
  EXPECT_TRUE(ValidateContentFilter(p, "").ok());
}

TEST(PolicyValidationTest, EachMistakeIsNamedByItsField) {
  v1::ContentFilterPolicy p = WithClassifier("Not An Id");
  p.set_classifier_endpoint("127.0.0.1:9000");
  auto* twice = p.add_classifier_labels();
  twice->set_label("violence");
  twice->set_category(v1::CONTENT_FILTER_CATEGORY_HATE);
  auto* pii = p.add_classifier_labels();
  pii->set_label("email");
  pii->set_category(v1::CONTENT_FILTER_CATEGORY_PII);
  p.add_classifier_labels()->set_category(v1::CONTENT_FILTER_CATEGORY_HATE);  // no label
  absl::Status s = ValidateContentFilter(p, "deployment.");
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string v = Violations(s);
  EXPECT_THAT(v, HasSubstr("deployment.content_filter.classifier_deployment: classifier_endpoint "
                           "and classifier_deployment are exclusive"));
  EXPECT_THAT(v, HasSubstr("deployment.content_filter.classifier_deployment: 'Not An Id' is not a "
                           "deployment id"));
  EXPECT_THAT(v, HasSubstr("content_filter.classifier_labels[1].label: 'violence' is mapped twice"));
  EXPECT_THAT(v, HasSubstr("content_filter.classifier_labels[2].category: one of HATE"));
  EXPECT_THAT(v, HasSubstr("content_filter.classifier_labels[3].label: 1 to 128 bytes"));
  EXPECT_THAT(v, ::testing::Not(HasSubstr("classifier_labels[3].category")));
  EXPECT_THAT(v, ::testing::Not(HasSubstr("classifier_labels[0]")));
}

TEST(PolicyValidationTest, LabelsWithoutAClassifierDeploymentAreRefused) {
  v1::ContentFilterPolicy p = WithClassifier("");
  absl::Status s = ValidateContentFilter(p, "");
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Violations(s), HasSubstr("content_filter.classifier_labels: labels map a "
                                       "classifier_deployment's labels"));
}

}  // namespace
}  // namespace tunefleet::scheduler
