// Runs the node reference scripts of tests/reference from a test.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tunefleet::text::testing {

// tests/reference, and whether its node_modules are installed (by
// scripts/install-deps.d/npm-references) and node is on the PATH.
std::string ReferenceDir();
bool ReferencesAvailable();
// Why ReferencesAvailable() is false, for GTEST_SKIP.
std::string ReferencesMissingReason();

// Runs `node <script> <args...>` in ReferenceDir() and returns its stdout;
// INTERNAL with its stderr when it fails.
absl::StatusOr<std::string> RunNode(const std::string& script,
                                    const std::vector<std::string>& args);

// Token ids of each text by a reference encoder (see encode.mjs).
absl::StatusOr<std::vector<std::vector<int32_t>>> ReferenceEncode(
    const std::string& model, const std::vector<std::string>& texts, bool add_special_tokens,
    const std::string& work_dir);

// Each conversation (role, content pairs) rendered by the model's official
// Jinja chat_template under @huggingface/jinja (see render.mjs).
absl::StatusOr<std::vector<std::string>> ReferenceRender(
    const std::string& model,
    const std::vector<std::vector<std::pair<std::string, std::string>>>& conversations,
    bool add_generation_prompt, const std::string& work_dir);

}  // namespace tunefleet::text::testing
