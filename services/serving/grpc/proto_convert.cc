#include "services/serving/grpc/proto_convert.h"

namespace tunefleet::serving {

namespace v1 = ::tunefleet::v1;

FilterPolicy PolicyFromProto(const v1::ContentFilterPolicy& p) {
  FilterPolicy out;
  out.disabled = p.disabled();
  for (const v1::ContentFilterRule& r : p.rules()) {
    out.rules.push_back(FilterRule{static_cast<FilterCategory>(r.category()),
                                   static_cast<FilterSeverity>(r.threshold()), r.apply_to_prompt(),
                                   r.apply_to_completion(),
                                   r.action() == v1::CONTENT_FILTER_ACTION_ANNOTATE
                                       ? FindingAction::kAnnotate
                                       : FindingAction::kBlock});
  }
  for (const v1::Blocklist& b : p.blocklists()) {
    out.blocklists.push_back(NamedBlocklist{b.name(), {b.terms().begin(), b.terms().end()},
                                            {b.regexes().begin(), b.regexes().end()}});
  }
  out.classifier_fail_open = p.on_classifier_error() == v1::CLASSIFIER_ERROR_POLICY_FAIL_OPEN;
  return out;
}

DeploymentSpec SpecFromProto(const ::tunefleet::internal::v1::DesiredDeployment& d) {
  DeploymentSpec s;
  s.id = d.deployment().id();
  s.tenant = d.tenant();
  s.model = d.deployment().model();
  s.base_model = d.base_model_artifact();
  s.adapter_artifact = d.adapter_artifact();
  s.filter = PolicyFromProto(d.deployment().content_filter());
  if (!d.deployment().content_filter().disabled()) {
    s.classifier_endpoint = d.deployment().content_filter().classifier_endpoint();
    s.classifier_deployment = d.deployment().content_filter().classifier_deployment();
    for (const v1::ClassifierLabel& l : d.deployment().content_filter().classifier_labels()) {
      s.classifier_labels[l.label()] = static_cast<FilterCategory>(l.category());
    }
  }
  if (d.deployment().content_filter().on_classifier_error() !=
      v1::CLASSIFIER_ERROR_POLICY_UNSPECIFIED) {
    s.classifier_fail_open = s.filter.classifier_fail_open;
  }
  return s;
}

ChatRequest ChatRequestFromProto(const v1::ChatCompletionRequest& r,
                                 std::chrono::steady_clock::time_point deadline) {
  ChatRequest out;
  out.deployment = r.deployment();
  for (const v1::ChatMessage& m : r.messages()) {
    ChatMessageIn in{m.role(), m.content(), {}, m.tool_call_id()};
    for (const v1::ToolCall& c : m.tool_calls()) {
      in.tool_calls.push_back(
          text::ToolCall{c.id(), c.type(), c.function().name(), c.function().arguments()});
    }
    out.messages.push_back(std::move(in));
  }
  if (r.has_temperature()) out.temperature = r.temperature();
  if (r.has_top_p()) out.top_p = r.top_p();
  if (r.has_max_tokens()) out.max_tokens = r.max_tokens();
  if (r.has_max_completion_tokens()) out.max_completion_tokens = r.max_completion_tokens();
  out.logprobs = r.logprobs();
  if (r.has_top_logprobs()) out.top_logprobs = r.top_logprobs();
  if (r.has_frequency_penalty()) out.frequency_penalty = r.frequency_penalty();
  if (r.has_presence_penalty()) out.presence_penalty = r.presence_penalty();
  out.user = r.user();
  out.stop.assign(r.stop().begin(), r.stop().end());
  if (r.has_seed()) out.seed = r.seed();
  out.n = r.n();
  out.deadline = deadline;
  return out;
}

void VerdictToProto(const FilterVerdict& v,
                    google::protobuf::RepeatedPtrField<v1::ContentFilterResult>* results,
                    google::protobuf::RepeatedPtrField<v1::ContentFilterFinding>* findings) {
  for (const CategoryVerdict& c : v.categories) {
    v1::ContentFilterResult* r = results->Add();
    r->set_category(static_cast<v1::ContentFilterCategory>(c.category));
    r->set_severity(static_cast<v1::Severity>(c.severity));
    r->set_detected(c.detected);
    r->set_filtered(c.filtered);
    if (c.detected) {
      r->set_start_offset(static_cast<int64_t>(c.begin));
      r->set_end_offset(static_cast<int64_t>(c.end));
    }
  }
  for (const FindingVerdict& f : v.findings) {
    v1::ContentFilterFinding* p = findings->Add();
    p->set_filter(f.filter);
    p->set_kind(f.kind);
    p->set_filtered(f.filtered);
    p->set_blocklist(f.list);
    p->set_category(static_cast<v1::ContentFilterCategory>(f.category));
    p->set_start_offset(static_cast<int64_t>(f.begin));
    p->set_end_offset(static_cast<int64_t>(f.end));
    p->set_classifier_error(f.error);
  }
}

void LogprobsToProto(const std::vector<ChatLogprob>& logprobs, v1::ChoiceLogprobs* out) {
  for (const ChatLogprob& l : logprobs) {
    v1::TokenLogprob* t = out->add_content();
    t->set_token(l.chosen.token);
    t->set_logprob(l.chosen.logprob);
    t->set_bytes(l.chosen.bytes);
    for (const ChatLogprob::Alternative& a : l.top) {
      v1::TopLogprob* top = t->add_top_logprobs();
      top->set_token(a.token);
      top->set_logprob(a.logprob);
      top->set_bytes(a.bytes);
    }
  }
}

v1::FinishReason FinishToProto(ChatFinish f) {
  switch (f) {
    case ChatFinish::kStop: return v1::FINISH_REASON_STOP;
    case ChatFinish::kLength: return v1::FINISH_REASON_LENGTH;
    case ChatFinish::kContentFilter: return v1::FINISH_REASON_CONTENT_FILTER;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

}  // namespace tunefleet::serving
