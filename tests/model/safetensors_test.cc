#include "common/model/safetensors.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/model/model_test_util.h"
#include "tests/testing/status_matchers.h"

namespace tunefleet::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::tunefleet::model::testing::ScopedTempDir;
using ::tunefleet::testing::StatusIs;

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with `header_json` and `data_bytes` bytes of data.
std::string FileWith(const std::string& header_json, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + std::string(data_bytes, '\x01');
}

TEST(SafetensorsTest, WriteReadIsBitExact) {
  ScopedTempDir dir;
  at::manual_seed(3);
  NamedTensors tensors = {
      {"f32", at::randn({3, 5})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 4}).to(at::kBFloat16)},
      {"f64", at::randn({2}).to(at::kDouble)},
      {"i64", at::arange(10, at::kLong)},
      {"i32", at::arange(-3, 3, at::kInt)},
      {"u8", at::arange(5, at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kLong).to(at::kBool)},
      {"empty", at::zeros({0, 4})},
      {"scalar", at::scalar_tensor(2.5)},
      {"strided", at::randn({4, 6}).t()},  // written contiguously
  };
  const std::string path = dir.Join("t.safetensors");
  TF_ASSERT_OK(WriteSafetensors(path, tensors, {{"format", "pt"}}));
  TF_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->header().metadata.at("format"), "pt");
  EXPECT_EQ(file->header().data_offset % 8, 0u);
  for (const auto& [name, t] : tensors) {
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, file->Get(name));
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
  // The same tensors give the same bytes.
  const std::string again = dir.Join("again.safetensors");
  TF_ASSERT_OK(WriteSafetensors(again, tensors, {{"format", "pt"}}));
  EXPECT_EQ(std::filesystem::file_size(path), std::filesystem::file_size(again));
  // No temporary files are left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr(".tmp.")));
    ++files;
  }
  EXPECT_EQ(files, 2);
}

TEST(SafetensorsTest, TensorsOutliveTheFileObjectAndWritesStayPrivate) {
  ScopedTempDir dir;
  const std::string path = dir.Join("t.safetensors");
  TF_ASSERT_OK(WriteSafetensors(path, {{"w", at::ones({1024})}}));
  at::Tensor t;
  {
    TF_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
    TF_ASSERT_OK_AND_ASSIGN(t, file->Get("w"));
  }
  EXPECT_EQ(t.sum().item<float>(), 1024.0f);
  t.mul_(3);  // copy-on-write: the file is unchanged
  EXPECT_EQ(t.sum().item<float>(), 3072.0f);
  TF_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  TF_ASSERT_OK_AND_ASSIGN(at::Tensor fresh, file->Get("w"));
  EXPECT_EQ(fresh.sum().item<float>(), 1024.0f);
  EXPECT_THAT(file->Get("nope"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
}

TEST(SafetensorsTest, RejectsUnwritableTensors) {
  ScopedTempDir dir;
  EXPECT_THAT(WriteSafetensors(dir.Join("a"), {{"x", at::ones({2})}, {"x", at::ones({2})}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate")));
  EXPECT_THAT(WriteSafetensors(dir.Join("b"), {{"c", at::ones({2}, at::kComplexFloat)}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'c'")));
}

struct MalformedCase {
  const char* name;
  std::string bytes;
  const char* message;  // a substring of the error
};

class MalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedTest, IsAClearError) {
  ScopedTempDir dir;
  const std::string path = dir.Join("bad.safetensors");
  WriteBytes(path, GetParam().bytes);
  EXPECT_THAT(SafetensorsFile::Open(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr(GetParam().message))));
  // The parser on bytes in memory says the same.
  EXPECT_THAT(ParseSafetensorsHeader(GetParam().bytes, GetParam().bytes.size(), "mem"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().message)));
}

std::string LengthOnly(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedTest,
    ::testing::Values(
        MalformedCase{"Empty", "", "truncated"},
        MalformedCase{"SevenBytes", "1234567", "truncated"},
        MalformedCase{"HeaderLongerThanFile", LengthOnly(1000) + "{}", "exceeds the file size"},
        MalformedCase{"HugeHeaderLength", LengthOnly(~0ull), "exceeds the file size"},
        MalformedCase{"TruncatedJson", FileWith(R"({"a":{"dtype":"F32","sha)", 0),
                      "not valid JSON"},
        MalformedCase{"NotAnObject", FileWith("[1,2]", 0), "not a JSON object"},
        MalformedCase{"UnknownDtype",
                      FileWith(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                      "tensor 'w': unsupported dtype 'F8_E4M3'"},
        MalformedCase{"MissingDtype", FileWith(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
                      "'w'"},
        MalformedCase{"NegativeDim",
                      FileWith(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                      "'w': shape"},
        MalformedCase{"OffsetsPastEnd",
                      FileWith(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                      "'w': data_offsets [0, 16] run past the end"},
        MalformedCase{"Misordered",
                      FileWith(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
                      "'w': data_offsets [8, 4] are misordered"},
        MalformedCase{"Overlapping",
                      FileWith(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               12),
                      "'b': data_offsets [4, 12] overlap tensor 'a'"},
        MalformedCase{"Gap",
                      FileWith(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                      "'a': data_offsets start at 4"},
        MalformedCase{"ShapeTimesDtypeIsNotLength",
                      FileWith(R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", 8),
                      "'w': shape [3] of BF16 needs 6 bytes but data_offsets span 8"},
        MalformedCase{
            "ShapeOverflow",
            FileWith(
                R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
            "'w': shape overflows"},
        MalformedCase{"TrailingBytes",
                      FileWith(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 9),
                      "data section has 9 bytes but the tensors cover 4"},
        MalformedCase{"BadMetadata", FileWith(R"({"__metadata__":{"a":1}})", 0), "__metadata__"}),
    [](const ::testing::TestParamInfo<MalformedCase>& info) {
      return std::string(info.param.name);
    });

TEST(SafetensorsDirTest, ShardedRoundTripAndLayoutSwitch) {
  ScopedTempDir dir;
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back("t" + std::to_string(i), at::full({256}, i, at::kFloat));
  TF_ASSERT_OK(WriteSafetensorsDir(dir.path(), tensors, /*max_shard_bytes=*/2048));
  EXPECT_TRUE(std::filesystem::exists(dir.Join("model.safetensors.index.json")));
  EXPECT_TRUE(std::filesystem::exists(dir.Join("model-00003-of-00003.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("model.safetensors")));
  TF_ASSERT_OK_AND_ASSIGN(SafetensorsDir st, SafetensorsDir::Open(dir.path()));
  EXPECT_EQ(st.files().size(), 3u);
  for (const auto& [name, t] : tensors) {
    TF_ASSERT_OK_AND_ASSIGN(at::Tensor got, st.Get(name));
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
  EXPECT_THAT(st.Get("t9"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("t9")));

  // Rewriting as one file removes the shards and the index.
  TF_ASSERT_OK(WriteSafetensorsDir(dir.path(), tensors));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("model.safetensors.index.json")));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("model-00001-of-00003.safetensors")));
  TF_ASSERT_OK_AND_ASSIGN(SafetensorsDir single, SafetensorsDir::Open(dir.path()));
  EXPECT_EQ(single.files().size(), 1u);
}

TEST(SafetensorsDirTest, BadIndexes) {
  ScopedTempDir dir;
  EXPECT_THAT(SafetensorsDir::Open(dir.path()), StatusIs(absl::StatusCode::kNotFound));
  TF_ASSERT_OK(WriteSafetensors(dir.Join("a.safetensors"), {{"x", at::ones({2})}}));
  const std::string index = dir.Join("model.safetensors.index.json");
  WriteBytes(index, R"({"weight_map": {"y": "a.safetensors"}})");
  EXPECT_THAT(SafetensorsDir::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'y'"), HasSubstr("a.safetensors"))));
  WriteBytes(index, R"({"weight_map": {"x": "../a.safetensors"}})");
  EXPECT_THAT(SafetensorsDir::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid")));
  WriteBytes(index, R"({"weight_map": {"x": "missing.safetensors"}})");
  EXPECT_THAT(SafetensorsDir::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  WriteBytes(index, R"({"metadata": {}})");
  EXPECT_THAT(SafetensorsDir::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weight_map")));
}

}  // namespace
}  // namespace tunefleet::model
