// tunefleet-serving: a serving replica. It registers with the scheduler,
// loads the base models and adapters of the deployments it is given, and
// answers chat completions with content filters. Health stays NOT_SERVING
// until the bases it must serve are loaded.
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "common/rpc/channel.h"
#include "common/rpc/server_flags.h"
#include "common/model/allocator.h"
#include "services/serving/deployment_reconciler.h"
#include "services/serving/grpc/grpc_control_plane.h"
#include "services/serving/grpc/inference_service.h"
#include "services/serving/grpc/remote_filter.h"
#include "services/serving/grpc/serving_metrics.h"
#include "services/serving/replica.h"

ABSL_FLAG(std::string, models_dir, "", "Base models: <models_dir>/<base model id>/ (Hugging Face)");
ABSL_FLAG(std::string, artifacts_dir, "", "Artifact store directory (adapters)");
ABSL_FLAG(std::string, scheduler_address, "", "host:port of the scheduler");
ABSL_FLAG(std::string, scheduler_tls_ca_file, "",
          "CA of the scheduler's certificate (default: --client_tls_ca_file)");
ABSL_FLAG(std::string, internal_key_file, "", "File holding the internal API key");
ABSL_FLAG(std::string, replica_name, "", "This replica's name (default: the host name, e.g. the pod name)");
ABSL_FLAG(std::string, advertise_address, "", "host:port clients reach this replica at");
ABSL_FLAG(std::string, device, "cpu", "Where the bases run: cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto",
          "Weights and compute: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16, "
          "float16 (CUDA)");
ABSL_FLAG(int64_t, max_batch, 32, "Most requests decoded together per base");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{4} << 30, "KV-cache memory per base");
ABSL_FLAG(int64_t, max_context, 0, "Tokens per request (0: the model's)");
ABSL_FLAG(int64_t, step_token_budget, 2048, "Padded tokens one engine step may compute");
ABSL_FLAG(int64_t, max_queue, 1024, "Requests that may wait for a batch row");
ABSL_FLAG(int64_t, adapter_budget_bytes, int64_t{2} << 30, "Resident LoRA adapter bytes per base");
ABSL_FLAG(int, engine_threads, 0, "Intra-op threads of each engine (0: libtorch's default)");
ABSL_FLAG(int, rpc_threads, 4, "Threads for prompt work and adapter loads");
ABSL_FLAG(std::string, blocklist_file, "", "Blocked terms, one per line");
ABSL_FLAG(std::string, blocklist_patterns_file, "", "Blocked RE2 patterns, one per line");
ABSL_FLAG(std::string, pii, "annotate_prompt",
          "PII detections: block | annotate | off | annotate_prompt (annotate prompts, block answers)");
ABSL_FLAG(bool, classifier_fail_open, false,
          "When a deployment's remote classifier fails and its policy leaves on_classifier_error "
          "unspecified: pass the text (true) or block it (false)");
ABSL_FLAG(int, classifier_timeout_ms, 500, "Deadline of each remote classifier call");
ABSL_FLAG(absl::Duration, status_report_interval, absl::Seconds(10),
          "How often the replica reports its deployments' readiness and usage (requests, "
          "tokens) to the scheduler besides after each change and at shutdown; inf: only then");
ABSL_FLAG(std::string, profanity_languages, "", "Comma-separated lexicon languages (empty: all)");

namespace {

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') out.push_back(line);
  }
  return out;
}

bool WritePortFile(const std::string& path, const tunefleet::rpc::Server& server) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"port\": " << server.port() << ", \"metrics_port\": " << server.metrics_port() << "}\n";
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tunefleet;
  model::ExecWithDecoderThreading(argv);  // before libgomp's threads start
  model::TuneAllocatorForTensorWork();    // before anything allocates
  rpc::BlockShutdownSignals();
  rpc::CommonFlags flags = rpc::ParseCommonFlags(argc, argv, "serving", 50054, 9094);
  auto keys = rpc::LoadKeysFromFlags(flags);
  if (!keys.ok()) {
    spdlog::critical("{}", keys.status().ToString());
    return 2;
  }
  serving::ReplicaOptions options;
  options.models_dir = absl::GetFlag(FLAGS_models_dir);
  options.artifacts_dir = absl::GetFlag(FLAGS_artifacts_dir);
  auto decoder_options = model::DecoderOptionsFor(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_dtype));
  if (!decoder_options.ok()) {
    spdlog::critical("{}", std::string(decoder_options.status().message()));
    return 2;
  }
  options.decoder = *decoder_options;
  spdlog::info("bases run on {} in {}", options.decoder.device.str(),
               std::string(c10::toString(options.decoder.dtype)));
  options.engine.max_batch = absl::GetFlag(FLAGS_max_batch);
  options.engine.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  options.engine.max_context = absl::GetFlag(FLAGS_max_context);
  options.engine.step_token_budget = absl::GetFlag(FLAGS_step_token_budget);
  options.engine.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.engine.threads = absl::GetFlag(FLAGS_engine_threads);
  options.adapter_budget_bytes = absl::GetFlag(FLAGS_adapter_budget_bytes);
  options.builtin_filter.blocklist_terms = ReadLines(absl::GetFlag(FLAGS_blocklist_file));
  options.builtin_filter.blocklist_patterns = ReadLines(absl::GetFlag(FLAGS_blocklist_patterns_file));
  if (const std::string langs = absl::GetFlag(FLAGS_profanity_languages); !langs.empty()) {
    options.builtin_filter.profanity_languages = absl::StrSplit(langs, ',');
  }
  const std::string pii = absl::GetFlag(FLAGS_pii);
  using serving::FindingAction;
  if (pii == "block") {
    options.pii_prompt = options.pii_completion = FindingAction::kBlock;
  } else if (pii == "annotate") {
    options.pii_prompt = options.pii_completion = FindingAction::kAnnotate;
  } else if (pii == "off") {
    options.pii_prompt = options.pii_completion = FindingAction::kOff;
    options.builtin_filter.pii = false;
  } else if (pii != "annotate_prompt") {
    spdlog::critical("--pii must be block, annotate, off or annotate_prompt, got \"{}\"", pii);
    return 2;
  }
  if (options.models_dir.empty() || absl::GetFlag(FLAGS_scheduler_address).empty()) {
    spdlog::critical("--models_dir and --scheduler_address are required");
    return 2;
  }
  std::string internal_key;
  if (const std::string f = absl::GetFlag(FLAGS_internal_key_file); !f.empty()) {
    std::ifstream in(f);
    std::getline(in, internal_key);
    if (internal_key.empty()) {
      spdlog::critical("--internal_key_file {} holds no key", f);
      return 2;
    }
  }
  // Remote classifiers named by deployment policies; one channel each.
  auto remote_channels = std::make_shared<std::map<std::string, std::shared_ptr<grpc::Channel>>>();
  auto remote_mu = std::make_shared<std::mutex>();
  options.classifier_fail_open = absl::GetFlag(FLAGS_classifier_fail_open);
  options.remote_filter = [=](const std::string& endpoint, const std::string& deployment)
      -> std::shared_ptr<const serving::ContentFilter> {
    std::shared_ptr<grpc::Channel> channel;
    {
      std::lock_guard<std::mutex> lock(*remote_mu);
      auto& c = (*remote_channels)[endpoint];
      if (!c) {
        auto made = rpc::MakeChannel(rpc::ClientChannelOptions(flags, endpoint));
        if (made.ok()) c = *made;
      }
      channel = c;
    }
    serving::RemoteFilterOptions ro;
    ro.api_key = internal_key;
    ro.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_classifier_timeout_ms));
    ro.deployment = deployment;
    return std::shared_ptr<const serving::ContentFilter>(serving::MakeRemoteFilter(channel, ro));
  };
  auto replica = serving::Replica::Create(options);
  if (!replica.ok()) {
    spdlog::critical("{}", replica.status().ToString());
    return 2;
  }
  rpc::ChannelOptions co =
      rpc::ClientChannelOptions(flags, absl::GetFlag(FLAGS_scheduler_address));
  // The older, server-authentication-only flag still names the scheduler's CA.
  if (!absl::GetFlag(FLAGS_scheduler_tls_ca_file).empty()) {
    co.tls_ca_file = absl::GetFlag(FLAGS_scheduler_tls_ca_file);
  }
  auto channel = rpc::MakeChannel(co);
  if (!channel.ok()) {
    spdlog::critical("{}", channel.status().ToString());
    return 2;
  }
  rpc::Authenticator auth(*keys);
  rpc::Executor executor(absl::GetFlag(FLAGS_rpc_threads));
  rpc::Server server(flags.server);
  serving::ServingMetrics metrics(server.registry());
  serving::InferenceServiceImpl inference(&auth, replica->get(), &executor, &metrics);
  auto classifier = serving::BuiltinFilter::Create(options.builtin_filter);
  if (!classifier.ok()) {
    spdlog::critical("{}", classifier.status().ToString());
    return 2;
  }
  serving::ContentFilterServiceImpl content_filter(&auth, classifier->get(), replica->get(),
                                                  &executor);
  server.AddService(&inference);
  server.AddService(&content_filter);
  if (absl::Status s = server.Start(); !s.ok()) {
    spdlog::critical("{}", s.ToString());
    return 1;
  }
  serving::ReconcilerOptions ro;
  ro.replica_name = absl::GetFlag(FLAGS_replica_name);
  if (ro.replica_name.empty()) {
    // The host name (a pod's name on Kubernetes), as the trainer agent does.
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    ro.replica_name = host;
  }
  ro.advertise_address = absl::GetFlag(FLAGS_advertise_address);
  if (ro.advertise_address.empty()) ro.advertise_address = "localhost:" + std::to_string(server.port());
  ro.report_interval = absl::GetFlag(FLAGS_status_report_interval);
  serving::GrpcControlPlaneOptions cpo;
  cpo.internal_key = internal_key;
  cpo.replica_name = ro.replica_name;
  serving::GrpcControlPlane control(*channel, cpo);
  serving::Replica* core = replica->get();
  serving::DeploymentReconciler reconciler(&control, core, ro, [&](bool bases_loaded) {
    metrics.Refresh(*core);
    // Serving once every base is in; a later failure of one base does not
    // take the others out of rotation.
    if (bases_loaded) server.SetServing(true);
  });
  reconciler.Start();
  if (!flags.port_file.empty() && !WritePortFile(flags.port_file, server)) {
    spdlog::critical("cannot write {}", flags.port_file);
    reconciler.Stop();
    server.Shutdown();
    return 1;
  }
  int sig = rpc::WaitForShutdownSignal();
  spdlog::info("received signal {}, shutting down", sig);
  reconciler.Stop();
  server.Shutdown();
  return 0;
}
