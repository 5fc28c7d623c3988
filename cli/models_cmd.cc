// tunefleet models list|get|download|delete
#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "common/base/sha256.h"
#include "tunefleet/v1/models.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::ModelService;

struct ModelsArgs {
  ClientFlags flags;
  std::string model_id, kind, output;
};

// Streams GetModelContent into `output` (written as output.part, renamed
// once the archive's sha256 matches the one the server sent).
int Download(Endpoint& endpoint, const std::string& model_id, std::string output) {
  auto channel = ChannelOf(endpoint);
  if (!channel.ok()) return Fail(channel.status());
  auto stub = ModelService::NewStub(*channel);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, endpoint.api_key, absl::Hours(6));
  v1::GetModelContentRequest req;
  req.set_model_id(model_id);
  auto reader = stub->GetModelContent(&ctx, req);
  std::string part;
  std::ofstream out;
  std::unique_ptr<ProgressBar> progress;
  Sha256 sha;
  int64_t received = 0;
  std::string expected_sha;
  v1::ModelContentChunk chunk;
  while (reader->Read(&chunk)) {
    if (!out.is_open()) {
      if (output.empty()) output = chunk.filename().empty() ? "model.tar" : chunk.filename();
      part = output + ".part";
      out.open(part, std::ios::binary | std::ios::trunc);
      if (!out) {
        ctx.TryCancel();
        (void)reader->Finish();
        return Fail(absl::InvalidArgumentError(absl::StrCat("--output: cannot write ", output)));
      }
      if (chunk.total_bytes() > kProgressMinBytes) {
        progress = std::make_unique<ProgressBar>(absl::StrCat("download ", output),
                                                 chunk.total_bytes());
      }
    }
    if (chunk.offset() != received) {
      ctx.TryCancel();
      (void)reader->Finish();
      std::remove(part.c_str());
      return Fail(absl::DataLossError(absl::StrCat("chunk at offset ", chunk.offset(),
                                                   " after ", received, " bytes")));
    }
    sha.Update(chunk.data());
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    received += static_cast<int64_t>(chunk.data().size());
    if (progress) progress->Update(received);
    if (!chunk.sha256().empty()) expected_sha = chunk.sha256();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    if (!part.empty()) std::remove(part.c_str());
    return Fail(rpc::FromGrpcStatus(status));
  }
  out.close();
  std::string got = sha.HexDigest();
  if (expected_sha.empty() || got != expected_sha) {
    std::remove(part.c_str());
    return Fail(absl::DataLossError(absl::StrCat(
        "the archive of ", model_id, " arrived with sha256 ", got, " but the server sent ",
        expected_sha.empty() ? "none" : expected_sha)));
  }
  if (std::rename(part.c_str(), output.c_str()) != 0) {
    return Fail(absl::InternalError(absl::StrCat("cannot rename ", part, " to ", output)));
  }
  if (progress) progress->Finish();
  std::cout << output << "  " << received << " bytes  sha256 " << got << "\n";
  return 0;
}

void PrintModelRow(const v1::Model& m) {
  std::cout << absl::StrFormat("%-48s %-10s %-7s %12d  %s\n", m.id(),
                               m.kind() == v1::MODEL_KIND_BASE ? "base" : "fine-tuned",
                               m.format().empty() ? "-" : m.format(), m.parameters(),
                               absl::StrJoin(m.deployments(), ","));
}

// A base model's methods, adapters and hyperparameter table.
void PrintCapabilities(const v1::ModelCapabilities& c) {
  std::vector<std::string> adapters;
  for (int a : c.adapters()) adapters.push_back(a == v1::ADAPTER_TYPE_FULL ? "full" : "lora");
  std::cout << "methods        " << absl::StrJoin(c.methods(), ", ") << "\n"
            << "adapters       " << absl::StrJoin(adapters, ", ") << "\n"
            << "min gpus       " << c.min_gpus() << "\n"
            << "max length     " << c.max_sequence_length() << "\n"
            << absl::StrFormat("%-26s %-22s %s\n", "HYPERPARAMETER", "RANGE", "AUTO");
  for (const auto& b : c.hyperparameters()) {
    std::string range = "-";
    if (b.has_min() || b.has_max()) {
      range = absl::StrCat(b.min_exclusive() ? "(" : "[",
                           b.has_min() ? absl::StrFormat("%g", b.min()) : "-inf", ", ",
                           b.has_max() ? absl::StrFormat("%g", b.max()) : "inf",
                           b.max_exclusive() ? ")" : "]");
    }
    std::cout << absl::StrFormat("%-26s %-22s %s\n", b.name(), range, b.auto_rule());
  }
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
      if (m->has_capabilities()) PrintCapabilities(m->capabilities());
    }
    return 0;
  }
  if (verb == "download") return Download(*endpoint, a.model_id, a.output);
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
  auto* download = verb("download", "Download a fine-tuned model as a tar archive (sha256 checked)");
  download->add_option("id", a->model_id, "Model id")->required();
  download->add_option("--output,-o", a->output, "The archive to write (default <model>.tar)");
  verb("delete", "Delete a fine-tuned model (refused while deployed)")
      ->add_option("id", a->model_id, "Model id")
      ->required();
}

}  // namespace tunefleet::cli
