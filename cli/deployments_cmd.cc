// tunefleet deployments create|update|list|get|watch|delete
#include <fstream>
#include <functional>
#include <iostream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/rpc/channel.h"
#include "common/rpc/status.h"
#include "tunefleet/v1/deployments.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::DeploymentService;

struct DeploymentsArgs {
  ClientFlags flags;
  std::string deployment_id, model, request_id;
  int replicas = 0;
  bool no_filter = false, wait = false;
  int wait_seconds = 300;
  // Content filter rules "CATEGORY[:SEVERITY]", an external classifier, and
  // (update) turning filtering back on.
  std::vector<std::string> filters;
  std::string classifier;
  bool filter_on = false;
  // A classification deployment as the classifier, its labels' categories
  // ("LABEL=CATEGORY"), fail open or closed, and named blocklists ("NAME=FILE").
  std::string classifier_deployment;
  std::vector<std::string> classifier_labels;
  std::string on_classifier_error;
  std::vector<std::string> blocklists;
  // update: which options were given.
  CLI::Option* model_opt = nullptr;
  CLI::Option* replicas_opt = nullptr;
};

// "violence", "self_harm:high", "pii:annotate", "blocklist:block": a rule
// for prompts and completions (CATEGORY[:SEVERITY][:ACTION], in any order
// after the category).
absl::StatusOr<v1::ContentFilterRule> ParseFilterRule(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  const std::string& category = parts[0];
  v1::ContentFilterRule rule;
  v1::ContentFilterCategory c;
  if (!v1::ContentFilterCategory_Parse(
          absl::StrCat("CONTENT_FILTER_CATEGORY_", absl::AsciiStrToUpper(category)), &c) ||
      c == v1::CONTENT_FILTER_CATEGORY_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--filter: unknown category '", category,
        "' (hate, sexual, violence, self_harm, jailbreak, profanity, pii, blocklist)"));
  }
  rule.set_category(c);
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string word = absl::AsciiStrToUpper(parts[i]);
    v1::Severity sev;
    v1::ContentFilterAction action;
    if (v1::ContentFilterAction_Parse(absl::StrCat("CONTENT_FILTER_ACTION_", word), &action) &&
        action != v1::CONTENT_FILTER_ACTION_UNSPECIFIED) {
      rule.set_action(action);
    } else if (v1::Severity_Parse(absl::StrCat("SEVERITY_", word), &sev) &&
               sev != v1::SEVERITY_UNSPECIFIED) {
      rule.set_threshold(sev);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--filter: unknown severity or action '", parts[i], "' in '", text,
                       "' (safe, low, medium, high; block, annotate)"));
    }
  }
  rule.set_apply_to_prompt(true);
  rule.set_apply_to_completion(true);
  return rule;
}

bool AnyPolicyOption(const DeploymentsArgs& a) {
  return !a.filters.empty() || !a.classifier.empty() || !a.classifier_deployment.empty() ||
         !a.classifier_labels.empty() || !a.on_classifier_error.empty() || !a.blocklists.empty();
}

// "NAME=FILE": the file's lines are the list's terms; a line "re:PATTERN" is
// an RE2 regular expression; empty lines are skipped.
absl::StatusOr<v1::Blocklist> ReadBlocklist(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--blocklist: '", spec, "' is not NAME=FILE"));
  }
  v1::Blocklist list;
  list.set_name(spec.substr(0, eq));
  const std::string path = spec.substr(eq + 1);
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--blocklist: cannot read ", path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line.rfind("re:", 0) == 0) {
      list.add_regexes(line.substr(3));
    } else {
      list.add_terms(line);
    }
  }
  return list;
}

// The policy the options describe.
absl::StatusOr<v1::ContentFilterPolicy> PolicyOf(const DeploymentsArgs& a) {
  v1::ContentFilterPolicy policy;
  if (a.no_filter && (a.filter_on || AnyPolicyOption(a))) {
    return absl::InvalidArgumentError(
        "--no-content-filter cannot be combined with --content-filter or other filter options");
  }
  if (!a.classifier.empty() && !a.classifier_deployment.empty()) {
    return absl::InvalidArgumentError(
        "--classifier and --classifier-deployment are exclusive: name one classifier");
  }
  policy.set_classifier_deployment(a.classifier_deployment);
  for (const std::string& l : a.classifier_labels) {
    const size_t eq = l.rfind('=');
    v1::ContentFilterCategory c = v1::CONTENT_FILTER_CATEGORY_UNSPECIFIED;
    if (eq == std::string::npos || eq == 0 ||
        !v1::ContentFilterCategory_Parse(
            absl::StrCat("CONTENT_FILTER_CATEGORY_", absl::AsciiStrToUpper(l.substr(eq + 1))), &c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--classifier-label: '", l,
          "' is not LABEL=CATEGORY (hate, sexual, violence, self_harm, jailbreak, profanity)"));
    }
    auto* label = policy.add_classifier_labels();
    label->set_label(l.substr(0, eq));
    label->set_category(c);
  }
  if (a.on_classifier_error == "open") {
    policy.set_on_classifier_error(v1::CLASSIFIER_ERROR_POLICY_FAIL_OPEN);
  } else if (a.on_classifier_error == "closed") {
    policy.set_on_classifier_error(v1::CLASSIFIER_ERROR_POLICY_FAIL_CLOSED);
  } else if (!a.on_classifier_error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--on-classifier-error: '", a.on_classifier_error, "' is not open or closed"));
  }
  for (const std::string& b : a.blocklists) {
    auto list = ReadBlocklist(b);
    if (!list.ok()) return list.status();
    *policy.add_blocklists() = *std::move(list);
  }
  policy.set_disabled(a.no_filter);
  for (const std::string& f : a.filters) {
    auto rule = ParseFilterRule(f);
    if (!rule.ok()) return rule.status();
    *policy.add_rules() = *rule;
  }
  policy.set_classifier_endpoint(a.classifier);
  return policy;
}

// Follows WatchDeployment until the deployment settles (ACTIVE, FAILED or
// deleted) or `seconds` run out; `on_change` sees every message. Returns the
// last deployment seen (still CREATING when the wait ran out).
absl::StatusOr<v1::Deployment> Watch(Endpoint& endpoint, v1::Deployment d, int seconds,
                                     const std::function<void(const v1::Deployment&)>& on_change) {
  auto channel = ChannelOf(endpoint);
  if (!channel.ok()) return channel.status();
  auto stub = DeploymentService::NewStub(*channel);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Seconds(seconds));
  v1::WatchDeploymentRequest req;
  req.set_deployment_id(d.id());
  auto reader = stub->WatchDeployment(&ctx, req);
  v1::Deployment next;
  while (reader->Read(&next)) {
    d = next;
    if (on_change) on_change(d);
  }
  grpc::Status s = reader->Finish();
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) return d;
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  return d;
}

std::string StateName(v1::DeploymentState s) {
  std::string name = v1::DeploymentState_Name(s);
  return name.size() > 17 ? absl::AsciiStrToLower(name.substr(17)) : name;
}

void PrintRow(const v1::Deployment& d) {
  std::cout << absl::StrFormat("%-28s %-10s %d/%d  %s%s\n", d.id(), StateName(d.state()),
                               d.ready_replicas(), d.replicas(), d.model(),
                               d.error().message().empty()
                                   ? ""
                                   : absl::StrCat("  error: ", d.error().message()));
}

int Run(DeploymentsArgs& a, const std::string& verb) {
  auto endpoint = ResolveService(a.flags, "scheduler");
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto show = [&](const v1::Deployment& d) {
    if (a.flags.json) {
      std::cout << ToJson(d) << "\n";
    } else {
      PrintRow(d);
    }
  };
  // After create and update: wait (--wait), show, and say how it ended.
  auto finish = [&](absl::StatusOr<v1::Deployment> d) -> int {
    if (!d.ok()) return Fail(d.status());
    if (a.wait) {
      d = Watch(*endpoint, *d, a.wait_seconds, nullptr);
      if (!d.ok()) return Fail(d.status());
    }
    show(*d);
    if (d->state() == v1::DEPLOYMENT_STATE_FAILED) return 1;
    if (a.wait && d->state() == v1::DEPLOYMENT_STATE_CREATING) {
      return Fail(absl::DeadlineExceededError(
          absl::StrCat("deployment ", d->id(), " is not ready after ", a.wait_seconds, "s")));
    }
    return 0;
  };
  if (verb == "create") {
    v1::CreateDeploymentRequest req;
    req.set_model(a.model);
    req.set_replicas(a.replicas);
    req.set_deployment_id(a.deployment_id);
    req.set_request_id(a.request_id);
    auto policy = PolicyOf(a);
    if (!policy.ok()) return Fail(policy.status());
    *req.mutable_content_filter() = *policy;
    return finish(
        Call<DeploymentService>(*endpoint, &DeploymentService::Stub::CreateDeployment, req));
  }
  if (verb == "update") {
    // Only what was given changes (the request's update_mask).
    v1::UpdateDeploymentRequest req;
    req.mutable_deployment()->set_id(a.deployment_id);
    if (a.model_opt->count() > 0) {
      req.mutable_deployment()->set_model(a.model);
      req.mutable_update_mask()->add_paths("model");
    }
    if (a.replicas_opt->count() > 0) {
      req.mutable_deployment()->set_replicas(a.replicas);
      req.mutable_update_mask()->add_paths("replicas");
    }
    if (a.no_filter || a.filter_on || AnyPolicyOption(a)) {
      auto policy = PolicyOf(a);
      if (!policy.ok()) return Fail(policy.status());
      *req.mutable_deployment()->mutable_content_filter() = *policy;
      req.mutable_update_mask()->add_paths("content_filter");
    }
    if (req.update_mask().paths_size() == 0) {
      return Fail(absl::InvalidArgumentError(
          "deployments update: nothing to change; give --model, --replicas, --filter, "
          "--classifier, --classifier-deployment, --blocklist, --content-filter or "
          "--no-content-filter"));
    }
    return finish(
        Call<DeploymentService>(*endpoint, &DeploymentService::Stub::UpdateDeployment, req));
  }
  if (verb == "list") {
    v1::ListDeploymentsRequest req;
    req.set_page_size(100);
    do {
      auto page = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::ListDeployments, req);
      if (!page.ok()) return Fail(page.status());
      for (const auto& d : page->deployments()) show(d);
      req.set_page_token(page->next_page_token());
    } while (!req.page_token().empty());
    return 0;
  }
  if (verb == "get") {
    v1::GetDeploymentRequest req;
    req.set_deployment_id(a.deployment_id);
    auto d = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::GetDeployment, req);
    if (!d.ok()) return Fail(d.status());
    show(*d);
    return 0;
  }
  if (verb == "watch") {
    // Every change until the deployment settles; exit 1 when it failed.
    v1::Deployment d;
    d.set_id(a.deployment_id);
    auto last = Watch(*endpoint, d, a.wait_seconds, show);
    if (!last.ok()) return Fail(last.status());
    if (last->state() == v1::DEPLOYMENT_STATE_FAILED) return 1;
    if (last->state() == v1::DEPLOYMENT_STATE_CREATING) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(
          "deployment ", last->id(), " is not ready after ", a.wait_seconds, "s")));
    }
    return 0;
  }
  if (verb == "delete") {
    v1::DeleteDeploymentRequest req;
    req.set_deployment_id(a.deployment_id);
    auto r = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::DeleteDeployment, req);
    if (!r.ok()) return Fail(r.status());
    if (a.flags.json) {
      std::cout << ToJson(*r) << "\n";
    } else {
      std::cout << "deleted " << r->id() << "\n";
    }
    return 0;
  }
  return 0;
}

}  // namespace

void AddDeploymentsCommands(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<DeploymentsArgs>();
  auto* deps = app->add_subcommand("deployments", "Models deployed behind the chat API");
  deps->require_subcommand(1);
  AddClientFlags(deps, &a->flags, "scheduler");
  auto verb = [&](const std::string& name, const std::string& help) {
    auto* c = deps->add_subcommand(name, help);
    c->fallthrough();
    c->callback([a, name, exit_code] { *exit_code = Run(*a, name); });
    return c;
  };
  auto* create = verb("create", "Deploy a model");
  create->add_option("--model", a->model, "Model id (base or fine-tuned)")->required();
  create->add_option("--replicas", a->replicas, "Replicas (default 1)");
  create->add_option("--id", a->deployment_id,
                     "Deployment id: [a-z0-9-]{1,63}, a letter first (default: dep-…)");
  create->add_option("--request-id", a->request_id,
                     "Idempotency key: a retry with the same key returns the same deployment");
  auto filter_options = [&](CLI::App* c) {
    c->add_flag("--no-content-filter", a->no_filter, "Opt out of content filtering");
    c->add_option("--filter", a->filters,
                  "A filter rule CATEGORY[:SEVERITY][:ACTION] (hate, sexual, violence, "
                  "self_harm, jailbreak, profanity, pii, blocklist; safe, low, medium, high; "
                  "block, annotate); repeat for more");
    c->add_option("--classifier", a->classifier,
                  "host:port of an external ContentFilterService");
    c->add_option("--classifier-deployment", a->classifier_deployment,
                  "A classification deployment (yours, fine-tuned with task classification) "
                  "as the classifier, run by the replicas that serve both");
    c->add_option("--classifier-label", a->classifier_labels,
                  "LABEL=CATEGORY: the classifier deployment's label as a category (default: "
                  "by the label's name); repeat for more");
    c->add_option("--on-classifier-error", a->on_classifier_error,
                  "open (the text passes) or closed (blocked, the default) when the classifier "
                  "fails");
    c->add_option("--blocklist", a->blocklists,
                  "NAME=FILE: a named blocklist, one term a line (\"re:PATTERN\" for an RE2 "
                  "regex); repeat for more");
    c->add_flag("--wait", a->wait, "Wait until the deployment serves");
    c->add_option("--wait-seconds", a->wait_seconds, "How long --wait waits")
        ->capture_default_str();
  };
  filter_options(create);
  auto* update = verb("update", "Change a deployment's model, replicas or content filter in place");
  update->add_option("id", a->deployment_id, "dep-…")->required();
  a->model_opt = update->add_option("--model", a->model,
                                    "A model of the same base (base or fine-tuned)");
  a->replicas_opt = update->add_option("--replicas", a->replicas, "Replicas");
  update->add_flag("--content-filter", a->filter_on,
                   "Filter with the default policy again (or the --filter rules)");
  filter_options(update);
  verb("list", "List deployments");
  verb("get", "Show a deployment")->add_option("id", a->deployment_id, "dep-…")->required();
  auto* watch = verb("watch", "Follow a deployment until it serves or fails");
  watch->add_option("id", a->deployment_id, "dep-…")->required();
  watch->add_option("--wait-seconds", a->wait_seconds, "How long to follow it")
      ->capture_default_str();
  verb("delete", "Delete a deployment")->add_option("id", a->deployment_id, "dep-…")->required();
}

}  // namespace tunefleet::cli
