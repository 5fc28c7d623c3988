// tunefleet-dataset: training files (upload, validate, split, shard).
#include <spdlog/spdlog.h>

#include <filesystem>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/rpc/server_flags.h"
#include "common/store/directory_artifact_store.h"
#include "common/store/sqlite.h"
#include "services/dataset/dataset_service.h"
#include "services/dataset/model_tokenizers.h"

ABSL_FLAG(int64_t, max_file_bytes, int64_t{1} << 30, "Largest file a tenant may upload");
ABSL_FLAG(int64_t, tenant_quota_bytes, int64_t{10} << 30, "Bytes of files each tenant may keep");
ABSL_FLAG(int, io_threads, 4, "Threads for disk work");
ABSL_FLAG(int, stream_window_bytes, 4 << 20,
          "HTTP/2 receive window per upload stream (0: gRPC's automatic window). Bounds what a "
          "fast client can park in the server: a 1 GiB upload grows the process by ~11-15 MiB "
          "with 4 MiB, by 40-64 MiB with the automatic window (fleet_test).");
ABSL_FLAG(std::string, models_dir, "",
          "Directory of Hugging Face model directories (<dir>/<base_model>/tokenizer.json, ...) "
          "whose tokenizers count tokens and build shards");

int main(int argc, char** argv) {
  using namespace tunefleet;
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "dataset", 50051, 9091);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  dataset::FileRegistryOptions options;
  options.max_file_bytes = absl::GetFlag(FLAGS_max_file_bytes);
  options.tenant_quota_bytes = absl::GetFlag(FLAGS_tenant_quota_bytes);
  // The database is opened (and crash leftovers removed) before the server
  // reports SERVING.
  // Storage is composed here: the registry takes whatever Database and
  // ArtifactStore it is given.
  absl::StatusOr<std::unique_ptr<dataset::FileRegistry>> registry =
      [&]() -> absl::StatusOr<std::unique_ptr<dataset::FileRegistry>> {
    std::error_code ec;
    std::filesystem::create_directories(flags.data_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", flags.data_dir, ": ", ec.message()));
    TF_ASSIGN_OR_RETURN(auto db, store::Database::Open(flags.data_dir + "/files.db"));
    TF_ASSIGN_OR_RETURN(auto blobs, store::DirectoryArtifactStore::Open(flags.data_dir + "/blobs"));
    return dataset::FileRegistry::Open(std::move(db), std::move(blobs), options);
  }();
  if (!registry.ok()) {
    spdlog::critical("cannot open {}: {}", flags.data_dir, registry.status().ToString());
    return 1;
  }
  rpc::Executor executor(absl::GetFlag(FLAGS_io_threads));
  rpc::Authenticator auth(*keys);
  dataset::FileProcessor processor(registry->get(), &dataset::EncodeReport);
  dataset::ModelDirTokenizerProvider tokenizers(absl::GetFlag(FLAGS_models_dir));
  dataset::DatasetServiceImpl files(&auth, registry->get(), &executor, &processor, &tokenizers);
  dataset::ShardServiceImpl shards(&auth, registry->get(), &executor, &tokenizers);
  dataset::DatasetControlServiceImpl control(&auth, registry->get(), &executor);
  flags.server.stream_window_bytes = absl::GetFlag(FLAGS_stream_window_bytes);
  rpc::Server server(flags.server);
  server.AddService(&files);
  server.AddService(&shards);
  server.AddService(&control);
  return rpc::ServeUntilSignal(
      server, [&] { return processor.RecoverPending(); }, flags.port_file);
}
