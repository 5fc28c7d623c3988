#include "common/store/artifact_store.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"

namespace tunefleet::store {
namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

absl::Status Invalid(absl::string_view what, absl::string_view name, absl::string_view reason) {
  // Escaped (a name may hold control bytes) and cut (it may be huge).
  constexpr size_t kShown = 200;
  std::string shown = absl::CHexEscape(name.substr(0, kShown));
  if (name.size() > kShown) absl::StrAppend(&shown, "...");
  return absl::InvalidArgumentError(
      absl::StrCat("invalid artifact ", what, " \"", shown, "\": ", reason));
}

// Checks the characters and the length common to names and prefixes.
absl::Status CheckCharacters(absl::string_view what, absl::string_view name) {
  if (name.size() > kMaxArtifactNameLength) {
    return Invalid(what, name, absl::StrCat("longer than ", kMaxArtifactNameLength, " bytes"));
  }
  if (!name.empty() && name.front() == '/') {
    return Invalid(what, name, "absolute paths are not allowed");
  }
  for (char c : name) {
    if (c == '/' || IsNameChar(c)) continue;
    if (c == '\0') return Invalid(what, name, "contains a NUL byte");
    if (c == '\\') return Invalid(what, name, "contains a backslash");
    return Invalid(what, name,
                   absl::StrCat("contains '", absl::CHexEscape(absl::string_view(&c, 1)),
                                "'; allowed are letters, digits, '.', '_', '-' and '/'"));
  }
  return absl::OkStatus();
}

absl::Status CheckSegment(absl::string_view what, absl::string_view name,
                          absl::string_view segment) {
  if (segment.empty()) return Invalid(what, name, "has an empty path segment");
  if (segment == "." || segment == "..") {
    return Invalid(what, name, absl::StrCat("has a '", segment, "' path segment"));
  }
  if (segment.size() > kMaxArtifactSegmentLength) {
    return Invalid(what, name,
                   absl::StrCat("has a segment longer than ", kMaxArtifactSegmentLength, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateArtifactName(absl::string_view name) {
  if (name.empty()) return Invalid("name", name, "empty");
  TF_RETURN_IF_ERROR(CheckCharacters("name", name));
  size_t depth = 0;
  for (absl::string_view segment : absl::StrSplit(name, '/')) {
    TF_RETURN_IF_ERROR(CheckSegment("name", name, segment));
    ++depth;
  }
  if (depth > kMaxArtifactNameDepth) {
    return Invalid("name", name,
                   absl::StrCat("has more than ", kMaxArtifactNameDepth, " segments"));
  }
  return absl::OkStatus();
}

absl::Status ValidateArtifactPrefix(absl::string_view prefix) {
  TF_RETURN_IF_ERROR(CheckCharacters("prefix", prefix));
  size_t slash = prefix.rfind('/');
  if (slash == absl::string_view::npos) {
    // A partial first segment: "", ".", ".." may all begin a valid one.
    if (prefix.size() > kMaxArtifactSegmentLength) {
      return Invalid("prefix", prefix, "has a segment that is too long");
    }
    return absl::OkStatus();
  }
  for (absl::string_view segment : absl::StrSplit(prefix.substr(0, slash), '/')) {
    TF_RETURN_IF_ERROR(CheckSegment("prefix", prefix, segment));
  }
  if (prefix.size() - slash - 1 > kMaxArtifactSegmentLength) {
    return Invalid("prefix", prefix, "has a segment that is too long");
  }
  return absl::OkStatus();
}

absl::StatusOr<ArtifactInfo> ArtifactStore::Put(absl::string_view name, absl::string_view data) {
  TF_ASSIGN_OR_RETURN(std::unique_ptr<ArtifactWriter> writer, OpenWriter(name));
  TF_RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit();
}

absl::StatusOr<std::string> ArtifactStore::Get(absl::string_view name) {
  TF_ASSIGN_OR_RETURN(std::unique_ptr<ArtifactReader> reader, OpenReader(name, 0));
  std::string data;
  data.reserve(static_cast<size_t>(reader->size()));
  constexpr size_t kChunk = size_t{1} << 20;
  while (true) {
    TF_ASSIGN_OR_RETURN(std::string chunk, reader->Read(kChunk));
    if (chunk.empty()) break;
    data.append(chunk);
  }
  return data;
}

}  // namespace tunefleet::store
