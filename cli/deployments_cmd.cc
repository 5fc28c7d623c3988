// tunefleet deployments create|list|get|delete
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "tunefleet/v1/deployments.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::DeploymentService;

struct DeploymentsArgs {
  ClientFlags flags;
  std::string deployment_id, model;
  int replicas = 0;
  bool no_filter = false, wait = false;
  int wait_seconds = 300;
};

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
  if (verb == "create") {
    v1::CreateDeploymentRequest req;
    req.set_model(a.model);
    req.set_replicas(a.replicas);
    req.mutable_content_filter()->set_disabled(a.no_filter);
    auto d = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::CreateDeployment, req);
    if (!d.ok()) return Fail(d.status());
    if (a.wait) {
      absl::Time deadline = absl::Now() + absl::Seconds(a.wait_seconds);
      while (d->state() == v1::DEPLOYMENT_STATE_CREATING && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(200));
        v1::GetDeploymentRequest get;
        get.set_deployment_id(d->id());
        d = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::GetDeployment, get);
        if (!d.ok()) return Fail(d.status());
      }
    }
    show(*d);
    if (d->state() == v1::DEPLOYMENT_STATE_FAILED) return 1;
    if (a.wait && d->state() == v1::DEPLOYMENT_STATE_CREATING) {
      return Fail(absl::DeadlineExceededError(
          absl::StrCat("deployment ", d->id(), " is not ready after ", a.wait_seconds, "s")));
    }
    return 0;
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
  if (verb == "delete") {
    v1::DeleteDeploymentRequest req;
    req.set_deployment_id(a.deployment_id);
    auto r = Call<DeploymentService>(*endpoint, &DeploymentService::Stub::DeleteDeployment, req);
    if (!r.ok()) return Fail(r.status());
    std::cout << "deleted " << r->deployment_id() << "\n";
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
  create->add_flag("--no-content-filter", a->no_filter, "Opt out of content filtering");
  create->add_flag("--wait", a->wait, "Wait until the deployment serves");
  create->add_option("--wait-seconds", a->wait_seconds, "How long --wait waits")
      ->capture_default_str();
  verb("list", "List deployments");
  verb("get", "Show a deployment")->add_option("id", a->deployment_id, "dep-…")->required();
  verb("delete", "Delete a deployment")->add_option("id", a->deployment_id, "dep-…")->required();
}

}  // namespace tunefleet::cli
