// tunefleet chat: one question, or an interactive session, against a
// deployment; tokens are printed as they stream.
#include <unistd.h>

#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "tunefleet/v1/inference.grpc.pb.h"

namespace tunefleet::cli {
namespace {

using v1::InferenceService;

struct ChatArgs {
  ClientFlags flags;
  std::string deployment, message, system;
  double temperature = 0;
  int max_tokens = 256;
  int64_t seed = 0;
  bool no_stream = false;
};

std::string CategoryName(v1::ContentFilterCategory c) {
  std::string name = v1::ContentFilterCategory_Name(c);
  return name.size() > 24 ? absl::AsciiStrToLower(name.substr(24)) : name;
}

std::string FilterSummary(const google::protobuf::RepeatedPtrField<v1::ContentFilterResult>& rs) {
  std::string out;
  for (const auto& r : rs) {
    if (!r.filtered() && !r.detected()) continue;
    absl::StrAppend(&out, out.empty() ? "" : ", ", CategoryName(r.category()),
                    r.filtered() ? " (blocked)" : " (detected)");
  }
  return out;
}

std::string FinishName(v1::FinishReason f) {
  std::string name = v1::FinishReason_Name(f);
  return name.size() > 14 ? absl::AsciiStrToLower(name.substr(14)) : name;
}

// One turn: sends the conversation, prints the answer, appends it.
absl::Status Turn(Endpoint& endpoint, ChatArgs& a, std::vector<v1::ChatMessage>* conversation) {
  v1::ChatCompletionRequest req;
  req.set_deployment(a.deployment);
  for (const auto& m : *conversation) *req.add_messages() = m;
  req.set_temperature(a.temperature);
  req.set_max_tokens(a.max_tokens);
  req.set_seed(a.seed);
  v1::ChatMessage answer;
  answer.set_role("assistant");
  if (a.no_stream || a.flags.json) {
    auto r = Call<InferenceService>(endpoint, &InferenceService::Stub::ChatCompletion, req,
                                    absl::Minutes(10));
    if (!r.ok()) return r.status();
    if (a.flags.json) {
      std::cout << ToJson(*r) << "\n";
    } else if (r->choices_size() > 0) {
      const auto& c = r->choices(0);
      std::cout << c.message().content() << "\n";
      std::string filtered = FilterSummary(c.content_filter_results());
      std::cerr << "[" << FinishName(c.finish_reason())
                << (filtered.empty() ? "" : ", content filter: " + filtered) << "; "
                << r->usage().prompt_tokens() << " prompt + " << r->usage().completion_tokens()
                << " completion tokens]\n";
    }
    if (r->choices_size() > 0) answer = r->choices(0).message();
  } else {
    auto channel = ChannelOf(endpoint);
    if (!channel.ok()) return channel.status();
    auto stub = InferenceService::NewStub(*channel);
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, endpoint.api_key, absl::Minutes(10));
    auto reader = stub->StreamChatCompletion(&ctx, req);
    v1::ChatCompletionChunk chunk;
    std::string text, tail;
    while (reader->Read(&chunk)) {
      std::cout << chunk.delta() << std::flush;
      text += chunk.delta();
      if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        std::string filtered = FilterSummary(chunk.content_filter_results());
        tail = absl::StrCat("[", FinishName(chunk.finish_reason()),
                            filtered.empty() ? "" : ", content filter: " + filtered, "; ",
                            chunk.usage().prompt_tokens(), " prompt + ",
                            chunk.usage().completion_tokens(), " completion tokens]");
      }
    }
    std::cout << "\n";
    grpc::Status s = reader->Finish();
    if (!s.ok()) return rpc::FromGrpcStatus(s);
    if (!tail.empty()) std::cerr << tail << "\n";
    answer.set_content(text);
  }
  conversation->push_back(answer);
  return absl::OkStatus();
}

// A prompt the deployment's content filter blocks is INVALID_ARGUMENT on the
// wire (the request's messages are refused) but, for a script, a refusal:
// exit code 4, like the other refusals.
int FailChat(const absl::Status& s) {
  int rc = Fail(s);
  if (s.code() == absl::StatusCode::kInvalidArgument &&
      absl::StrContains(s.message(), "content filter")) {
    return 4;
  }
  return rc;
}

int Run(ChatArgs& a) {
  auto endpoint = ResolveService(a.flags, "serving");
  if (!endpoint.ok()) return Fail(endpoint.status());
  std::vector<v1::ChatMessage> conversation;
  if (!a.system.empty()) {
    v1::ChatMessage m;
    m.set_role("system");
    m.set_content(a.system);
    conversation.push_back(m);
  }
  auto ask = [&](const std::string& text) {
    v1::ChatMessage m;
    m.set_role("user");
    m.set_content(text);
    conversation.push_back(m);
    return Turn(*endpoint, a, &conversation);
  };
  if (!a.message.empty()) {
    absl::Status s = ask(a.message);
    return s.ok() ? 0 : FailChat(s);
  }
  bool tty = isatty(STDIN_FILENO);
  std::string line;
  for (;;) {
    if (tty) std::cout << "you> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    absl::Status s = ask(line);
    if (!s.ok()) {
      FailChat(s);
      conversation.pop_back();  // the refused question leaves the conversation
    }
  }
  return 0;
}

}  // namespace

void AddChatCommand(CLI::App* app, int* exit_code) {
  auto a = std::make_shared<ChatArgs>();
  auto* chat = app->add_subcommand(
      "chat", "Chat with a deployment (one --message, or lines from standard input)");
  AddClientFlags(chat, &a->flags, "serving");
  chat->add_option("--deployment", a->deployment, "dep-…")->required();
  chat->add_option("--message", a->message, "Ask one question and exit");
  chat->add_option("--system", a->system, "A system message");
  chat->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  chat->add_option("--max-tokens", a->max_tokens, "Longest answer")->capture_default_str();
  chat->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  chat->add_flag("--no-stream", a->no_stream, "One response instead of streamed tokens");
  chat->callback([a, exit_code] { *exit_code = Run(*a); });
}

}  // namespace tunefleet::cli
