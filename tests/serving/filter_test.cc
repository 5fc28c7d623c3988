// Content filters: the contract every implementation passes (detections,
// partial text, streams that never release blocked text), the built-in
// filter's lists, PII checks and the policy.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "absl/strings/str_cat.h"
#include "services/serving/filters/builtin_filter.h"
#include "services/serving/filters/content_filter.h"
#include "services/serving/filters/profanity_lexicon.h"
#include "services/serving/grpc/remote_filter.h"
#include "tunefleet/v1/content_filter.grpc.pb.h"
#include "services/serving/model_classifier.h"
#include "common/rpc/channel.h"
#include "common/rpc/server.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::serving {
namespace {

using ::testing::HasSubstr;
using ::tunefleet::testing::StatusIs;

// Each implementation under the contract: a filter that must detect
// kBlocked (and nothing in kClean).
struct FilterFactory {
  std::string name;
  std::function<std::unique_ptr<ContentFilter>()> make;
};

constexpr char kBlocked[] = "Project Falcon";
constexpr char kClean[] = "The weather is mild today, with a light breeze from the west.";

std::unique_ptr<ContentFilter> MakeBuiltin() {
  BuiltinFilterOptions o;
  o.blocklist_terms = {kBlocked};
  auto f = BuiltinFilter::Create(o);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::unique_ptr<ContentFilter>(std::move(*f)) : nullptr;
}

// A team's own classifier behind ContentFilterService, as a remote filter
// talks to it: it reports kBlocked as a jailbreak.
class TeamClassifier final : public v1::ContentFilterService::Service {
 public:
  TeamClassifier() : filter_(MakeBuiltin()) {}
  grpc::Status Classify(grpc::ServerContext*, const v1::ClassifyRequest* req,
                        v1::ClassifyResponse* resp) override {
    auto d = filter_->Classify(req->text(), TextSource::kPrompt);
    auto* r = resp->add_results();
    r->set_category(v1::CONTENT_FILTER_CATEGORY_JAILBREAK);
    const bool hit = d.ok() && !d->empty();
    r->set_detected(hit);
    r->set_severity(hit ? v1::SEVERITY_HIGH : v1::SEVERITY_SAFE);
    return grpc::Status::OK;
  }

 private:
  std::unique_ptr<ContentFilter> filter_;
};

struct TeamClassifierServer {
  TeamClassifierServer() {
    rpc::ServerOptions so;
    so.listen_address = "127.0.0.1:0";
    so.metrics_address = "";
    server = std::make_unique<rpc::Server>(so);
    server->AddService(&service);
    EXPECT_TRUE(server->Start().ok());
    rpc::ChannelOptions co;
    co.target = absl::StrCat("127.0.0.1:", server->port());
    channel = *rpc::MakeChannel(co);
  }
  TeamClassifier service;
  std::unique_ptr<rpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
};

std::unique_ptr<ContentFilter> MakeRemote() {
  static TeamClassifierServer* server = new TeamClassifierServer();  // one per process
  RemoteFilterOptions o;
  o.timeout = absl::Seconds(10);
  return MakeRemoteFilter(server->channel, o);
}

// A classification deployment as the classifier (DeploymentClassifierFilter):
// a model with labels "safe" and "jailbreak" whose probabilities come, in
// this suite, from the same stand-in the team's classifier uses.
std::unique_ptr<ContentFilter> MakeDeploymentClassifier() {
  std::shared_ptr<ContentFilter> stand_in = MakeBuiltin();
  return std::make_unique<DeploymentClassifierFilter>(
      "dep-guard", std::map<std::string, FilterCategory>{},
      [stand_in](absl::string_view text) -> absl::StatusOr<LabelScores> {
        auto d = stand_in->Classify(text, TextSource::kPrompt);
        if (!d.ok()) return d.status();
        const double p = d->empty() ? 0.02 : 0.97;
        return LabelScores{{"safe", "jailbreak"}, {1 - p, p}, 0};
      });
}

class ContentFilterContract : public ::testing::TestWithParam<FilterFactory> {
 protected:
  void SetUp() override { filter_ = GetParam().make(); }
  std::unique_ptr<ContentFilter> filter_;
  FilterPolicy policy_;
};

TEST_P(ContentFilterContract, FindsTheBlockedTextAndNothingInCleanText) {
  TF_ASSERT_OK_AND_ASSIGN(auto clean, filter_->Classify(kClean, TextSource::kPrompt));
  EXPECT_FALSE(ApplyPolicy(policy_, TextSource::kPrompt, clean).blocked);
  const std::string text = absl::StrCat("Tell me about ", kBlocked, ", please.");
  for (TextSource source : {TextSource::kPrompt, TextSource::kCompletion}) {
    TF_ASSERT_OK_AND_ASSIGN(auto found, filter_->Classify(text, source));
    ASSERT_FALSE(found.empty());
    // The detection covers the blocked text (a classifier may report the whole text).
    const size_t at = text.find(kBlocked);
    EXPECT_LE(found[0].begin, at);
    EXPECT_GE(found[0].end, at + std::string(kBlocked).size());
    EXPECT_TRUE(ApplyPolicy(policy_, source, found).blocked);
  }
  FilterPolicy off;
  off.disabled = true;
  TF_ASSERT_OK_AND_ASSIGN(auto found, filter_->Classify(text, TextSource::kPrompt));
  EXPECT_FALSE(ApplyPolicy(off, TextSource::kPrompt, found).blocked);
}

TEST_P(ContentFilterContract, AStreamNeverReleasesBlockedText) {
  const std::string prefix = "Here is the plan: we go north, then east, and then we talk about ";
  for (size_t lead = 0; lead < prefix.size(); lead += 7) {
    for (size_t chunk : {1, 3, 5, 11}) {
      const std::string text =
          absl::StrCat(prefix.substr(0, lead), " ", kBlocked, " until the evening comes around.");
      const size_t term_at = lead + 1;
      StreamGuard guard(filter_.get(), &policy_);
      std::string released;
      for (size_t i = 0; i < text.size() && !guard.blocked(); i += chunk) {
        TF_ASSERT_OK_AND_ASSIGN(std::string out, guard.Push(text.substr(i, chunk)));
        released += out;
      }
      if (!guard.blocked()) {
        TF_ASSERT_OK_AND_ASSIGN(std::string rest, guard.Finish());
        released += rest;
      }
      EXPECT_TRUE(guard.blocked()) << "lead " << lead << " chunk " << chunk;
      EXPECT_LE(released.size(), term_at) << "released \"" << released << "\"";
      EXPECT_THAT(released, ::testing::Not(HasSubstr("Falc")));
    }
  }
}

TEST_P(ContentFilterContract, AStreamOfCleanTextIsReleasedLiveAndWhole) {
  const std::string text = absl::StrCat(kClean, " ", kClean, " ", kClean);
  StreamGuard guard(filter_.get(), &policy_);
  std::string released;
  size_t first_release_at = 0;
  for (size_t i = 0; i < text.size(); i += 4) {
    TF_ASSERT_OK_AND_ASSIGN(std::string out, guard.Push(text.substr(i, 4)));
    if (!out.empty() && released.empty()) first_release_at = i + 4;
    released += out;
  }
  TF_ASSERT_OK_AND_ASSIGN(std::string rest, guard.Finish());
  EXPECT_FALSE(guard.blocked());
  EXPECT_EQ(released + rest, text);
  // The first text leaves after the hold-back window, not at the end.
  EXPECT_GT(first_release_at, 0u);
  EXPECT_LE(first_release_at, guard.holdback() + 4);
  EXPECT_LT(guard.holdback(), text.size() / 2);
}

INSTANTIATE_TEST_SUITE_P(Filters, ContentFilterContract,
                         ::testing::Values(FilterFactory{"builtin", MakeBuiltin},
                                           FilterFactory{"remote", MakeRemote},
                                           FilterFactory{"deployment", MakeDeploymentClassifier}),
                         [](const auto& info) { return info.param.name; });

// --- the built-in filter ------------------------------------------------------

std::unique_ptr<BuiltinFilter> Builtin(BuiltinFilterOptions o = {}) {
  auto f = BuiltinFilter::Create(o);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *std::move(f) : nullptr;
}

std::vector<std::string> Kinds(const std::vector<Detection>& d) {
  std::vector<std::string> out;
  for (const Detection& x : d) out.push_back(x.filter + ":" + x.kind);
  return out;
}

TEST(BuiltinFilterTest, ProfanityLexiconComesFromThePublishedList) {
  EXPECT_GT(kProfanityLexiconSize, 2000);
  EXPECT_THAT(std::string(kProfanityLexiconSource), HasSubstr("naughty-words"));
  auto f = Builtin();
  // Whole words, any case, any language of the list.
  TF_ASSERT_OK_AND_ASSIGN(auto d, f->Classify("Well, ARSCHLOCH! said he.", TextSource::kPrompt));
  ASSERT_THAT(Kinds(d), ::testing::ElementsAre("profanity:de"));
  EXPECT_EQ(d[0].category, FilterCategory::kProfanity);
  EXPECT_EQ(d[0].begin, 6u);
  EXPECT_EQ(d[0].end, 15u);
  TF_ASSERT_OK_AND_ASSIGN(d, f->Classify("Marschlochmann is a surname", TextSource::kPrompt));
  EXPECT_THAT(d, ::testing::IsEmpty());
  // An entry that is an everyday word in another language of the list is
  // left out (French "con" is Spanish "with").
  TF_ASSERT_OK_AND_ASSIGN(d, f->Classify("¿Cómo contacto con soporte?", TextSource::kPrompt));
  EXPECT_THAT(d, ::testing::IsEmpty());
  // Scripts without spaces match inside text.
  TF_ASSERT_OK_AND_ASSIGN(d, f->Classify("他说下贱的话", TextSource::kPrompt));
  EXPECT_THAT(Kinds(d), ::testing::Contains("profanity:zh"));
  // Languages can be chosen.
  BuiltinFilterOptions en;
  en.profanity_languages = {"en"};
  TF_ASSERT_OK_AND_ASSIGN(d, Builtin(en)->Classify("Well, arschloch!", TextSource::kPrompt));
  EXPECT_THAT(d, ::testing::IsEmpty());
}

TEST(BuiltinFilterTest, PersonalData) {
  auto f = Builtin();
  auto kinds = [&](const std::string& text) {
    auto d = f->Classify(text, TextSource::kCompletion);
    EXPECT_TRUE(d.ok());
    return d.ok() ? Kinds(*d) : std::vector<std::string>{};
  };
  EXPECT_THAT(kinds("write to jane.doe+news@example.co.uk today"), ::testing::ElementsAre("pii:email"));
  EXPECT_THAT(kinds("call +1 (415) 555-0132 now"), ::testing::ElementsAre("pii:phone"));
  EXPECT_THAT(kinds("card 4111 1111 1111 1111 exp 12/29"), ::testing::ElementsAre("pii:card"));
  EXPECT_THAT(kinds("card 4111-1111-1111-1112 fails Luhn"), ::testing::IsEmpty());
  EXPECT_THAT(kinds("IBAN GB82 WEST 1234 5698 7654 32."), ::testing::ElementsAre("pii:iban"));
  EXPECT_THAT(kinds("IBAN GB82 WEST 1234 5698 7654 33."), ::testing::Not(::testing::Contains("pii:iban")));
  EXPECT_THAT(kinds("In 2024 we sold 1500 units."), ::testing::IsEmpty());
  EXPECT_TRUE(LuhnValid("79927398713"));
  EXPECT_FALSE(LuhnValid("79927398710"));
  EXPECT_TRUE(IbanValid("DE89370400440532013000"));
}

TEST(BuiltinFilterTest, BlocklistsTermsAndPatterns) {
  BuiltinFilterOptions o;
  o.blocklist_terms = {"Project Falcon", "zorblax"};
  o.blocklist_patterns = {R"(ticket-\d{4})"};
  o.pii = false;
  o.profanity = false;
  auto f = Builtin(o);
  TF_ASSERT_OK_AND_ASSIGN(auto d, f->Classify("about project   FALCON and ticket-1234", TextSource::kPrompt));
  EXPECT_THAT(Kinds(d), ::testing::UnorderedElementsAre("blocklist:Project Falcon",
                                                        "blocklist:ticket-\\d{4}"));
  // A partial stream: a word at the very end may still grow.
  TF_ASSERT_OK_AND_ASSIGN(d, f->Classify("we say zorblax", TextSource::kCompletion, true));
  EXPECT_THAT(d, ::testing::IsEmpty());
  TF_ASSERT_OK_AND_ASSIGN(d, f->Classify("we say zorblax", TextSource::kCompletion, false));
  EXPECT_EQ(d.size(), 1u);
  o.blocklist_patterns = {"ok", "(unclosed"};
  EXPECT_THAT(BuiltinFilter::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blocklist_patterns[1]")));
}

TEST(BuiltinFilterTest, NamedBlocklistsNameTheirListInDetections) {
  BuiltinFilterOptions o;
  o.pii = false;
  o.profanity = false;
  o.blocklist_terms = {"zorblax"};
  o.blocklists = {NamedBlocklist{"codenames", {"falcon"}, {R"(ticket-\d{4})"}},
                  NamedBlocklist{"more", {"falcon"}, {}}};
  TF_ASSERT_OK_AND_ASSIGN(auto f, BuiltinFilter::Create(o));
  const std::string text = "zorblax saw Falcon at ticket-1234";
  TF_ASSERT_OK_AND_ASSIGN(auto d, f->Classify(text, TextSource::kPrompt));
  std::vector<std::string> got;
  for (const Detection& x : d) {
    EXPECT_EQ(x.category, FilterCategory::kBlocklist);
    got.push_back(absl::StrCat(x.list, ":", x.kind, "@", x.begin, "-", x.end));
  }
  // The same term in two lists is found for each.
  EXPECT_THAT(got, ::testing::UnorderedElementsAre("replica:zorblax@0-7", "codenames:falcon@12-18",
                                                   "more:falcon@12-18",
                                                   "codenames:ticket-\\d{4}@22-33"));
  o.blocklists[1].regexes = {"fine", "a**"};
  EXPECT_THAT(BuiltinFilter::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("blocklists[1].regexes[1] \"a**\" (list more)")));
}

TEST(RemoteFilterTest, AClassifierThatIsDownReportsItsErrorAndThePolicyDecides) {
  rpc::ChannelOptions co;
  co.target = "127.0.0.1:1";  // nothing listens there
  auto channel = *rpc::MakeChannel(co);
  RemoteFilterOptions o;
  o.timeout = absl::Milliseconds(200);
  std::unique_ptr<ContentFilter> remote = MakeRemoteFilter(channel, o);
  TF_ASSERT_OK_AND_ASSIGN(auto d, remote->Classify(kClean, TextSource::kPrompt));
  EXPECT_THAT(Kinds(d), ::testing::ElementsAre("classifier:error"));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_THAT(d[0].error, HasSubstr("UNAVAILABLE"));
  // Fail closed (the default): blocked, the error in the finding.
  FilterPolicy policy;
  FilterVerdict v = ApplyPolicy(policy, TextSource::kPrompt, d);
  EXPECT_TRUE(v.blocked);
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_TRUE(v.findings[0].filtered);
  EXPECT_EQ(v.findings[0].error, d[0].error);
  // Fail open: passes, still reported.
  policy.classifier_fail_open = true;
  v = ApplyPolicy(policy, TextSource::kCompletion, d);
  EXPECT_FALSE(v.blocked);
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_FALSE(v.findings[0].filtered);
  EXPECT_EQ(v.findings[0].error, d[0].error);
}

TEST(FilterPolicyTest, RulesThresholdsTargetsAndActions) {
  const std::vector<Detection> profanity = {
      Detection{FilterCategory::kProfanity, FilterSeverity::kMedium, "profanity", "en", 4, 7}};
  FilterPolicy p;
  FilterVerdict v = ApplyPolicy(p, TextSource::kCompletion, profanity);
  EXPECT_TRUE(v.blocked);
  ASSERT_EQ(v.categories.size(), 1u);
  EXPECT_TRUE(v.categories[0].detected);
  EXPECT_TRUE(v.categories[0].filtered);
  EXPECT_EQ(v.categories[0].begin, 4u);
  EXPECT_EQ(v.categories[0].end, 7u);
  p.rules = {FilterRule{FilterCategory::kProfanity, FilterSeverity::kHigh, true, true}};
  EXPECT_FALSE(ApplyPolicy(p, TextSource::kCompletion, profanity).blocked);
  // A rule that names neither source applies to both.
  p.rules = {FilterRule{FilterCategory::kProfanity, FilterSeverity::kLow, false, false}};
  EXPECT_TRUE(ApplyPolicy(p, TextSource::kPrompt, profanity).blocked);
  EXPECT_TRUE(ApplyPolicy(p, TextSource::kCompletion, profanity).blocked);
  // Annotate: reported, never blocks.
  p.rules[0].action = FindingAction::kAnnotate;
  v = ApplyPolicy(p, TextSource::kPrompt, profanity);
  EXPECT_FALSE(v.blocked);
  EXPECT_TRUE(v.categories[0].detected);
  EXPECT_FALSE(v.categories[0].filtered);
  // A rule for completions only: prompts are reported, not blocked.
  p.rules = {FilterRule{FilterCategory::kProfanity, FilterSeverity::kLow, false, true}};
  EXPECT_FALSE(ApplyPolicy(p, TextSource::kPrompt, profanity).blocked);
  EXPECT_TRUE(ApplyPolicy(p, TextSource::kCompletion, profanity).blocked);

  // PII: annotated in prompts, blocked in answers by default; a rule for
  // category PII decides instead.
  const std::vector<Detection> email = {
      Detection{FilterCategory::kPii, FilterSeverity::kHigh, "pii", "email", 0, 3}};
  v = ApplyPolicy(FilterPolicy{}, TextSource::kPrompt, email);
  EXPECT_FALSE(v.blocked);
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_FALSE(v.findings[0].filtered);
  EXPECT_EQ(v.findings[0].category, FilterCategory::kPii);
  EXPECT_TRUE(ApplyPolicy(FilterPolicy{}, TextSource::kCompletion, email).blocked);
  FilterPolicy pii;
  pii.rules = {FilterRule{FilterCategory::kPii, FilterSeverity::kUnspecified, false, false}};
  EXPECT_TRUE(ApplyPolicy(pii, TextSource::kPrompt, email).blocked);
  pii.rules[0].action = FindingAction::kAnnotate;
  EXPECT_FALSE(ApplyPolicy(pii, TextSource::kCompletion, email).blocked);

  // Blocklist matches: blocked by default, a BLOCKLIST rule may annotate;
  // the finding keeps the list, the entry and the span.
  const std::vector<Detection> listed = {Detection{FilterCategory::kBlocklist,
                                                   FilterSeverity::kHigh, "blocklist", "falcon", 5,
                                                   11, "codenames"}};
  v = ApplyPolicy(FilterPolicy{}, TextSource::kPrompt, listed);
  EXPECT_TRUE(v.blocked);
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_EQ(v.findings[0].list, "codenames");
  EXPECT_EQ(v.findings[0].kind, "falcon");
  EXPECT_EQ(v.findings[0].begin, 5u);
  EXPECT_EQ(v.findings[0].end, 11u);
  FilterPolicy annotate;
  annotate.rules = {FilterRule{FilterCategory::kBlocklist, FilterSeverity::kHigh, false, false,
                               FindingAction::kAnnotate}};
  v = ApplyPolicy(annotate, TextSource::kCompletion, listed);
  EXPECT_FALSE(v.blocked);
  EXPECT_FALSE(v.findings[0].filtered);
}

TEST(FilterPolicyTest, AStreamReportsOffsetsInTheWholeCompletion) {
  BuiltinFilterOptions o;
  o.pii = false;
  o.profanity = false;
  o.blocklists = {NamedBlocklist{"codenames", {"falcon"}, {}}};
  TF_ASSERT_OK_AND_ASSIGN(auto f, BuiltinFilter::Create(o));
  FilterPolicy policy;
  StreamGuard guard(f.get(), &policy, 16);
  std::string released;
  const std::string text =
      "A long and quiet answer about the sea, the ships and the harbour, then falcon appears.";
  for (char c : text) {
    TF_ASSERT_OK_AND_ASSIGN(std::string out, guard.Push(std::string(1, c)));
    released += out;
    if (guard.blocked()) break;
  }
  ASSERT_TRUE(guard.blocked());
  EXPECT_EQ(released.find("falcon"), std::string::npos);
  ASSERT_EQ(guard.verdict().findings.size(), 1u);
  const size_t at = text.find("falcon");
  EXPECT_EQ(guard.verdict().findings[0].begin, at);
  EXPECT_EQ(guard.verdict().findings[0].end, at + 6);
}

TEST(ModelClassifierTest, LabelsMapToCategoriesAndProbabilitiesToSeverities) {
  EXPECT_EQ(CategoryFromLabelName("Violence"), FilterCategory::kViolence);
  EXPECT_EQ(CategoryFromLabelName("self-harm"), FilterCategory::kSelfHarm);
  EXPECT_EQ(CategoryFromLabelName("CONTENT_FILTER_CATEGORY_HATE"), FilterCategory::kHate);
  EXPECT_EQ(CategoryFromLabelName("safe"), std::nullopt);
  EXPECT_EQ(CategoryFromLabelName("pii"), std::nullopt);  // a finding, not a classifier category
  EXPECT_EQ(SeverityFromProbability(0.9), FilterSeverity::kHigh);
  EXPECT_EQ(SeverityFromProbability(0.5), FilterSeverity::kMedium);
  EXPECT_EQ(SeverityFromProbability(0.3), FilterSeverity::kLow);
  EXPECT_EQ(SeverityFromProbability(0.1), FilterSeverity::kSafe);
  // The policy's mapping first, then the name; "safe" and low scores report nothing.
  const LabelScores s{{"safe", "violent", "hate", "sexual"}, {0.05, 0.6, 0.3, 0.05}, 7};
  auto d = LabelDetections(s, {{"violent", FilterCategory::kViolence}}, 12);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].category, FilterCategory::kViolence);
  EXPECT_EQ(d[0].severity, FilterSeverity::kMedium);
  EXPECT_EQ(d[0].kind, "violent");
  EXPECT_EQ(d[0].end, 12u);
  EXPECT_EQ(d[1].category, FilterCategory::kHate);
  EXPECT_EQ(d[1].severity, FilterSeverity::kLow);
}

TEST(ModelClassifierTest, AFailedClassificationIsAClassifierErrorThePolicyDecides) {
  DeploymentClassifierFilter f("dep-nope", {}, [](absl::string_view) -> absl::StatusOr<LabelScores> {
    return absl::NotFoundError("deployment dep-nope is not served by this replica");
  });
  TF_ASSERT_OK_AND_ASSIGN(auto d, f.Classify("hello", TextSource::kPrompt));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].filter, "classifier");
  EXPECT_EQ(d[0].kind, "error");
  EXPECT_THAT(d[0].error, HasSubstr("NOT_FOUND: deployment dep-nope"));
  FilterPolicy closed, open;
  open.classifier_fail_open = true;
  EXPECT_TRUE(ApplyPolicy(closed, TextSource::kPrompt, d).blocked);
  FilterVerdict v = ApplyPolicy(open, TextSource::kPrompt, d);
  EXPECT_FALSE(v.blocked);
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_FALSE(v.findings[0].error.empty());
}

}  // namespace
}  // namespace tunefleet::serving
