#include "services/trainer/protocol/shard_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tunefleet::trainer {
namespace {

constexpr char kMagic[8] = {'T', 'F', 'S', 'H', 'A', 'R', 'D', '\0'};
constexpr size_t kHeaderBytes = 64;
constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

uint64_t Fnv(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard files are little-endian");

template <typename T>
void Put(unsigned char* buf, size_t& at, T v) {
  std::memcpy(buf + at, &v, sizeof(T));
  at += sizeof(T);
}
template <typename T>
T Get(const unsigned char* buf, size_t& at) {
  T v;
  std::memcpy(&v, buf + at, sizeof(T));
  at += sizeof(T);
  return v;
}

}  // namespace

ShardFileWriter::ShardFileWriter(std::string path, std::string tmp, std::FILE* f,
                                 uint32_t vocab_size)
    : path_(std::move(path)), tmp_(std::move(tmp)), f_(f), checksum_(kFnvOffset) {
  info_.vocab_size = vocab_size;
}

ShardFileWriter::~ShardFileWriter() {
  if (f_) std::fclose(f_);
  if (!finished_) ::unlink(tmp_.c_str());
}

absl::StatusOr<std::unique_ptr<ShardFileWriter>> ShardFileWriter::Create(const std::string& path,
                                                                         int64_t vocab_size) {
  if (vocab_size <= 0 || vocab_size > INT32_MAX)
    return absl::InvalidArgumentError(absl::StrCat("shard file ", path, ": bad vocab_size ", vocab_size));
  std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return absl::InternalError(absl::StrCat("cannot create shard file ", tmp, ": ", std::strerror(errno)));
  auto w = std::unique_ptr<ShardFileWriter>(
      new ShardFileWriter(path, tmp, f, static_cast<uint32_t>(vocab_size)));
  unsigned char header[kHeaderBytes] = {};
  TF_RETURN_IF_ERROR(w->WriteBytes(header, sizeof(header)));  // rewritten by Finish
  return w;
}

absl::Status ShardFileWriter::WriteBytes(const void* data, size_t n) {
  if (n == 0) return absl::OkStatus();
  if (std::fwrite(data, 1, n, f_) != n)
    return absl::InternalError(absl::StrCat("writing shard file ", tmp_, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

absl::Status ShardFileWriter::SetPairs(bool pairs) {
  if (pairs == info_.pairs) return absl::OkStatus();
  if (finished_ || info_.num_examples > 0)
    return absl::FailedPreconditionError(
        absl::StrCat("shard file ", path_, ": pairs must be set before the first example"));
  info_.pairs = pairs;
  return absl::OkStatus();
}

absl::Status ShardFileWriter::AddExample(absl::Span<const int32_t> ids,
                                         absl::Span<const uint8_t> mask, int32_t label) {
  if (finished_) return absl::FailedPreconditionError("shard file already finished");
  if (info_.pairs) {
    const int32_t expected = info_.num_examples % 2 == 0 ? kChosenLabel : kRejectedLabel;
    if (label != -1 && label != expected)
      return absl::InvalidArgumentError(absl::StrCat(
          "shard example ", info_.num_examples, ": label ", label, " in a pairs file, whose example ",
          info_.num_examples, " is ", expected == kChosenLabel ? "chosen (1)" : "rejected (0)"));
    label = expected;
  }
  if (ids.size() != mask.size())
    return absl::InvalidArgumentError(absl::StrCat("shard example ", info_.num_examples, ": ",
                                                   ids.size(), " token ids but ", mask.size(),
                                                   " loss-mask bytes"));
  if (ids.empty())
    return absl::InvalidArgumentError(absl::StrCat("shard example ", info_.num_examples, ": empty"));
  for (int32_t id : ids) {
    if (id < 0 || static_cast<uint32_t>(id) >= info_.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("shard example ", info_.num_examples,
                                                     ": token id ", id, " outside the vocabulary of ",
                                                     info_.vocab_size));
    if (id > info_.max_token_id) info_.max_token_id = id;
  }
  uint32_t len = static_cast<uint32_t>(ids.size());
  std::vector<uint8_t> m(mask.begin(), mask.end());
  for (uint8_t& b : m) {
    b = b ? 1 : 0;
    info_.trained_tokens += b;
  }
  unsigned char head[8];
  size_t at = 0;
  Put<uint32_t>(head, at, len);
  Put<int32_t>(head, at, label);
  TF_RETURN_IF_ERROR(WriteBytes(head, sizeof(head)));
  TF_RETURN_IF_ERROR(WriteBytes(ids.data(), ids.size() * sizeof(int32_t)));
  TF_RETURN_IF_ERROR(WriteBytes(m.data(), m.size()));
  checksum_ = Fnv(checksum_, head, sizeof(head));
  checksum_ = Fnv(checksum_, ids.data(), ids.size() * sizeof(int32_t));
  checksum_ = Fnv(checksum_, m.data(), m.size());
  info_.num_examples += 1;
  info_.num_tokens += len;
  return absl::OkStatus();
}

absl::Status ShardFileWriter::AddChunk(absl::Span<const int32_t> ids, absl::string_view mask,
                                       absl::Span<const int32_t> lengths,
                                       absl::Span<const int32_t> labels) {
  if (ids.size() != mask.size())
    return absl::InvalidArgumentError(absl::StrCat("shard chunk: ", ids.size(), " token ids but ",
                                                   mask.size(), " loss-mask bytes"));
  if (!labels.empty() && labels.size() != lengths.size())
    return absl::InvalidArgumentError(absl::StrCat("shard chunk: ", labels.size(), " labels for ",
                                                   lengths.size(), " examples"));
  size_t at = 0;
  for (size_t e = 0; e < lengths.size(); ++e) {
    const int32_t len = lengths[e];
    if (len <= 0 || at + static_cast<size_t>(len) > ids.size())
      return absl::InvalidArgumentError(
          absl::StrCat("shard chunk: example_lengths do not split its ", ids.size(), " tokens"));
    TF_RETURN_IF_ERROR(AddExample(
        ids.subspan(at, len),
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(mask.data()) + at, len),
        labels.empty() ? -1 : labels[e]));
    at += len;
  }
  if (at != ids.size())
    return absl::InvalidArgumentError(
        absl::StrCat("shard chunk: example_lengths cover ", at, " of its ", ids.size(), " tokens"));
  return absl::OkStatus();
}

absl::Status ShardFileWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError("shard file already finished");
  if (info_.pairs && info_.num_examples % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat("shard file ", path_, ": ", info_.num_examples,
                                                   " examples in a pairs file (a pair is split)"));
  const uint32_t flags = info_.pairs ? kShardFlagPairs : 0;
  unsigned char header[kHeaderBytes] = {};
  size_t at = 0;
  std::memcpy(header, kMagic, sizeof(kMagic));
  at += sizeof(kMagic);
  Put<uint32_t>(header, at, flags == 0 ? 1u : kShardFileVersion);
  Put<uint32_t>(header, at, flags);
  Put<uint64_t>(header, at, info_.num_examples);
  Put<uint64_t>(header, at, info_.num_tokens);
  Put<uint64_t>(header, at, info_.trained_tokens);
  Put<uint32_t>(header, at, info_.vocab_size);
  Put<int32_t>(header, at, info_.max_token_id);
  Put<uint64_t>(header, at, checksum_);
  if (std::fflush(f_) != 0 || std::fseek(f_, 0, SEEK_SET) != 0)
    return absl::InternalError(absl::StrCat("writing shard file ", tmp_));
  TF_RETURN_IF_ERROR(WriteBytes(header, sizeof(header)));
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0)
    return absl::InternalError(absl::StrCat("syncing shard file ", tmp_, ": ", std::strerror(errno)));
  std::fclose(f_);
  f_ = nullptr;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    return absl::InternalError(absl::StrCat("renaming shard file to ", path_, ": ", std::strerror(errno)));
  finished_ = true;
  return absl::OkStatus();
}

absl::StatusOr<ShardFile> ShardFile::Read(const std::string& path) {
  auto corrupt = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("shard file ", path, ": ", what));
  };
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return absl::NotFoundError(absl::StrCat("shard file ", path, ": ", std::strerror(errno)));
  std::vector<unsigned char> bytes;
  {
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    bool err = std::ferror(f);
    std::fclose(f);
    if (err) return absl::InternalError(absl::StrCat("shard file ", path, ": read error"));
  }
  if (bytes.size() < kHeaderBytes) return corrupt("truncated header");
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return corrupt("not a shard file (bad magic)");
  size_t at = sizeof(kMagic);
  uint32_t version = Get<uint32_t>(bytes.data(), at);
  if (version < 1 || version > kShardFileVersion)
    return corrupt(absl::StrCat("unsupported version ", version, " (this worker reads 1 to ",
                                kShardFileVersion, ")"));
  const uint32_t flags = Get<uint32_t>(bytes.data(), at);
  if ((version == 1 && flags != 0) || (flags & ~kShardFlagPairs) != 0)
    return corrupt(absl::StrCat("unknown flags 0x", absl::Hex(flags), " in a version ", version, " file"));
  ShardFile s;
  s.path_ = path;
  s.info_.pairs = (flags & kShardFlagPairs) != 0;
  s.info_.num_examples = Get<uint64_t>(bytes.data(), at);
  s.info_.num_tokens = Get<uint64_t>(bytes.data(), at);
  s.info_.trained_tokens = Get<uint64_t>(bytes.data(), at);
  s.info_.vocab_size = Get<uint32_t>(bytes.data(), at);
  s.info_.max_token_id = Get<int32_t>(bytes.data(), at);
  uint64_t checksum = Get<uint64_t>(bytes.data(), at);
  const size_t body = bytes.size() - kHeaderBytes;
  if (s.info_.num_tokens * 5 + s.info_.num_examples * 8 != body)
    return corrupt(absl::StrCat("size ", bytes.size(), " does not match the header's ",
                                s.info_.num_examples, " examples and ", s.info_.num_tokens,
                                " tokens (truncated?)"));
  if (Fnv(kFnvOffset, bytes.data() + kHeaderBytes, body) != checksum)
    return corrupt("checksum mismatch (corrupted)");
  s.tokens_.resize(s.info_.num_tokens);
  s.mask_.resize(s.info_.num_tokens);
  s.labels_.reserve(s.info_.num_examples);
  s.lengths_.reserve(s.info_.num_examples);
  s.offsets_.reserve(s.info_.num_examples);
  at = kHeaderBytes;
  uint64_t tok = 0, trained = 0;
  int32_t max_id = -1;
  for (uint64_t i = 0; i < s.info_.num_examples; ++i) {
    if (at + 8 > bytes.size()) return corrupt("truncated example header");
    uint32_t len = Get<uint32_t>(bytes.data(), at);
    int32_t label = Get<int32_t>(bytes.data(), at);
    if (s.info_.pairs && label != (i % 2 == 0 ? kChosenLabel : kRejectedLabel))
      return corrupt(absl::StrCat("example ", i, ": label ", label, " breaks the chosen/rejected pairs"));
    if (len == 0 || tok + len > s.info_.num_tokens || at + 5ull * len > bytes.size())
      return corrupt(absl::StrCat("example ", i, ": bad length ", len));
    std::memcpy(s.tokens_.data() + tok, bytes.data() + at, len * sizeof(int32_t));
    at += len * sizeof(int32_t);
    std::memcpy(s.mask_.data() + tok, bytes.data() + at, len);
    at += len;
    for (uint64_t k = tok; k < tok + len; ++k) {
      int32_t id = s.tokens_[k];
      if (id < 0 || static_cast<uint32_t>(id) >= s.info_.vocab_size)
        return corrupt(absl::StrCat("example ", i, ": token id ", id, " outside the vocabulary of ",
                                    s.info_.vocab_size));
      if (id > max_id) max_id = id;
      trained += s.mask_[k] ? 1 : 0;
    }
    s.offsets_.push_back(tok);
    s.lengths_.push_back(len);
    s.labels_.push_back(label);
    tok += len;
  }
  if (tok != s.info_.num_tokens || trained != s.info_.trained_tokens || max_id != s.info_.max_token_id)
    return corrupt("counts disagree with the header");
  if (s.info_.pairs && s.info_.num_examples % 2 != 0)
    return corrupt(absl::StrCat(s.info_.num_examples, " examples in a pairs file"));
  return s;
}

ShardFile::Example ShardFile::example(int64_t i) const {
  const size_t k = static_cast<size_t>(i);
  Example e;
  e.token_ids = absl::MakeConstSpan(tokens_.data() + offsets_[k], lengths_[k]);
  e.loss_mask = absl::MakeConstSpan(mask_.data() + offsets_[k], lengths_[k]);
  e.label = labels_[k];
  return e;
}

}  // namespace tunefleet::trainer
