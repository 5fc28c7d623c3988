// tunefleet files upload|list|get|validate|split|delete
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "common/base/sha256.h"

namespace tunefleet::cli {

void PrintFile(const v1::File& f) {
  std::cout << absl::StrFormat("%-30s %-10s %10d  %s  %s\n", f.id(),
                               v1::FileStatus_Name(f.status()).substr(12), f.bytes(),
                               f.sha256().substr(0, 12), f.filename());
}

namespace {

struct FilesArgs {
  ClientFlags flags;
  std::string path, purpose = "fine-tune", file_id, base_model, output;
  int max_len = 0, epochs = 1, max_issues = 20;
  double ratio = 0.1;
  int64_t seed = 0;
};

int Run(FilesArgs& a, const std::string& verb) {
  auto endpoint = ResolveService(a.flags, "dataset");
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto show = [&](const v1::File& f) {
    if (a.flags.json) {
      std::cout << ToJson(f) << "\n";
    } else {
      PrintFile(f);
    }
  };
  if (verb == "upload") {
    auto p = ParsePurpose(a.purpose);
    if (!p.ok()) return Fail(p.status());
    // Progress on standard error for files of more than one chunk: a bar on
    // a terminal, plain lines otherwise.
    std::error_code ec;
    int64_t size = static_cast<int64_t>(std::filesystem::file_size(a.path, ec));
    std::unique_ptr<ProgressBar> progress;
    if (!ec && size > kProgressMinBytes) {
      progress = std::make_unique<ProgressBar>(
          absl::StrCat("upload ", std::filesystem::path(a.path).filename().string()), size);
    }
    auto f = UploadFile(*endpoint, a.path, *p, [&](int64_t sent) {
      if (progress) progress->Update(sent);
    });
    if (!f.ok()) return Fail(f.status());
    if (progress) progress->Finish();
    show(*f);
  } else if (verb == "list") {
    std::string token;
    do {
      auto page = ListFiles(*endpoint, token);
      if (!page.ok()) return Fail(page.status());
      for (const auto& f : page->files()) show(f);
      token = page->next_page_token();
    } while (!token.empty());
  } else if (verb == "get") {
    auto f = GetFile(*endpoint, a.file_id);
    if (!f.ok()) return Fail(f.status());
    show(*f);
  } else if (verb == "validate") {
    v1::ValidateFileRequest req;
    req.set_file_id(a.file_id);
    req.set_base_model(a.base_model);
    req.set_max_sequence_length(a.max_len);
    req.set_epochs(a.epochs);
    req.set_max_issues(a.max_issues);
    auto r = ValidateFile(*endpoint, req);
    if (!r.ok()) return Fail(r.status());
    std::cout << (a.flags.json ? ToJson(*r) + "\n" : FormatReport(*r));
    return r->valid() ? 0 : 2;
  } else if (verb == "split") {
    auto r = SplitFile(*endpoint, a.file_id, a.ratio, a.seed);
    if (!r.ok()) return Fail(r.status());
    show(r->training_file());
    show(r->validation_file());
  } else if (verb == "download") {
    // Streams the content to --output (or standard output) and checks its
    // sha256 against the file's.
    auto meta = GetFile(*endpoint, a.file_id);
    if (!meta.ok()) return Fail(meta.status());
    auto channel = ChannelOf(*endpoint);
    if (!channel.ok()) return Fail(channel.status());
    auto stub = v1::DatasetService::NewStub(*channel);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, endpoint->api_key, absl::Hours(1));
    v1::GetFileContentRequest req;
    req.set_file_id(a.file_id);
    auto reader = stub->GetFileContent(&ctx, req);
    std::ofstream file;
    if (!a.output.empty()) {
      file.open(a.output, std::ios::binary | std::ios::trunc);
      if (!file) return Fail(absl::InvalidArgumentError(absl::StrCat("--output: cannot write ", a.output)));
    }
    std::ostream& out = a.output.empty() ? std::cout : file;
    Sha256 sha;
    v1::FileChunk chunk;
    while (reader->Read(&chunk)) {
      sha.Update(chunk.data());
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail(rpc::FromGrpcStatus(s));
    out.flush();
    if (sha.HexDigest() != meta->sha256()) {
      return Fail(absl::DataLossError(absl::StrCat("downloaded content has sha256 ", sha.HexDigest(),
                                                   " but ", a.file_id, " has ", meta->sha256())));
    }
    if (!a.output.empty()) std::cerr << "wrote " << a.output << "\n";
  } else if (verb == "delete") {
    absl::Status s = DeleteFile(*endpoint, a.file_id);
    if (!s.ok()) return Fail(s);
    std::cout << "deleted " << a.file_id << "\n";
  }
  return 0;
}

}  // namespace

void AddFilesCommands(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<FilesArgs>();
  auto* files = app->add_subcommand("files", "Training and validation files");
  files->require_subcommand(1);
  AddClientFlags(files, &a->flags, "dataset");
  auto verb = [&](const std::string& name, const std::string& help) {
    auto* c = files->add_subcommand(name, help);
    c->fallthrough();  // --fleet/--target/--api-key may follow the verb too
    c->callback([a, name, exit_code] { *exit_code = Run(*a, name); });
    return c;
  };
  auto* upload = verb("upload", "Upload a JSONL file");
  upload->add_option("path", a->path, "Local file")->required();
  upload->add_option("--purpose", a->purpose, "fine-tune or validation")->capture_default_str();
  verb("list", "List your files");
  verb("get", "Show one file")->add_option("id", a->file_id, "file-…")->required();
  verb("delete", "Delete a file")->add_option("id", a->file_id, "file-…")->required();
  auto* download = verb("download", "Download a file's content (sha256 checked)");
  download->add_option("id", a->file_id, "file-…")->required();
  download->add_option("--output,-o", a->output, "Write here instead of standard output");
  auto* validate = verb("validate", "Validate a file and show statistics");
  validate->add_option("id", a->file_id, "file-…")->required();
  validate->add_option("--base-model", a->base_model, "Count tokens with this model's tokenizer");
  validate->add_option("--max-seq-len", a->max_len, "Report examples longer than this");
  validate->add_option("--epochs", a->epochs, "For the cost estimate")->capture_default_str();
  validate->add_option("--max-issues", a->max_issues, "Issues shown in detail")
      ->capture_default_str();
  auto* split = verb("split", "Split into training and validation files");
  split->add_option("id", a->file_id, "file-…")->required();
  split->add_option("--ratio", a->ratio, "Fraction for validation, (0, 0.5]")
      ->capture_default_str();
  split->add_option("--seed", a->seed, "Same seed, same split")->capture_default_str();
}

}  // namespace tunefleet::cli
