// tunefleet models list|get|delete
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "tunefleet/v1/models.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::ModelService;

struct ModelsArgs {
  ClientFlags flags;
  std::string model_id, kind;
};

void PrintModelRow(const v1::Model& m) {
  std::cout << absl::StrFormat("%-48s %-10s %-7s %12d  %s\n", m.id(),
                               m.kind() == v1::MODEL_KIND_BASE ? "base" : "fine-tuned",
                               m.format().empty() ? "-" : m.format(), m.parameters(),
                               absl::StrJoin(m.deployments(), ","));
}

int Run(ModelsArgs& a, const std::string& verb) {
  auto endpoint = ResolveService(a.flags, "scheduler");
  if (!endpoint.ok()) return Fail(endpoint.status());
  if (verb == "list") {
    v1::ListModelsRequest req;
    req.set_page_size(100);
    if (a.kind == "base") {
      req.set_kind(v1::MODEL_KIND_BASE);
    } else if (a.kind == "fine-tuned") {
      req.set_kind(v1::MODEL_KIND_FINE_TUNED);
    } else if (!a.kind.empty()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--kind must be base or fine-tuned, not '", a.kind, "'")));
    }
    if (!a.flags.json) {
      std::cout << absl::StrFormat("%-48s %-10s %-7s %12s  %s\n", "MODEL", "KIND", "FORMAT",
                                   "PARAMETERS", "DEPLOYMENTS");
    }
    do {
      auto page = Call<ModelService>(*endpoint, &ModelService::Stub::ListModels, req);
      if (!page.ok()) return Fail(page.status());
      for (const auto& m : page->models()) {
        if (a.flags.json) {
          std::cout << ToJson(m) << "\n";
        } else {
          PrintModelRow(m);
        }
      }
      req.set_page_token(page->next_page_token());
    } while (!req.page_token().empty());
    return 0;
  }
  if (verb == "get") {
    v1::GetModelRequest req;
    req.set_model_id(a.model_id);
    auto m = Call<ModelService>(*endpoint, &ModelService::Stub::GetModel, req);
    if (!m.ok()) return Fail(m.status());
    if (a.flags.json) {
      std::cout << ToJson(*m) << "\n";
    } else {
      PrintModelRow(*m);
    }
    return 0;
  }
  if (verb == "delete") {
    v1::DeleteModelRequest req;
    req.set_model_id(a.model_id);
    auto r = Call<ModelService>(*endpoint, &ModelService::Stub::DeleteModel, req);
    if (!r.ok()) return Fail(r.status());
    std::cout << "deleted " << r->model_id() << "\n";
    return 0;
  }
  return 0;
}

}  // namespace

void AddModelsCommands(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<ModelsArgs>();
  auto* models = app->add_subcommand("models", "Base and fine-tuned models");
  models->require_subcommand(1);
  AddClientFlags(models, &a->flags, "scheduler");
  auto verb = [&](const std::string& name, const std::string& help) {
    auto* c = models->add_subcommand(name, help);
    c->fallthrough();
    c->callback([a, name, exit_code] { *exit_code = Run(*a, name); });
    return c;
  };
  verb("list", "List models")->add_option("--kind", a->kind, "base or fine-tuned");
  verb("get", "Show a model")->add_option("id", a->model_id, "Model id")->required();
  verb("delete", "Delete a fine-tuned model (refused while deployed)")
      ->add_option("id", a->model_id, "Model id")
      ->required();
}

}  // namespace tunefleet::cli
