// safetensors reader and writer: round trips of every dtype, and malformed or
// hostile files refused with errors that name the file and the problem. The
// conformance with Hugging Face's own implementation is checked by
// tests/python/test_safetensors.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "qat/export/safetensors.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  // Plain files removed one by one: std::filesystem::remove_all resolves to a
  // copy exported by libtorch.so that crashes (seen with torch 2.11.0).
  std::vector<std::string> created_;
  void TearDown() override {
    for (const auto& file : created_)
      std::remove(file.c_str());
  }
  std::string path(const std::string& name) {
    created_.push_back((fs::temp_directory_path() /
                        ("qat_st_" + std::to_string(::getpid()) + "_" + name))
                           .string());
    return created_.back();
  }
  // A file made of a header length, a header and `data_bytes` zero bytes.
  std::string raw(
      const std::string& name,
      const std::string& header,
      size_t data_bytes,
      uint64_t declared_length = UINT64_MAX) {
    const uint64_t length =
        declared_length == UINT64_MAX ? header.size() : declared_length;
    const std::string file = path(name);
    std::ofstream out(file, std::ios::binary);
    for (int i = 0; i < 8; ++i)
      out.put(static_cast<char>((length >> (8 * i)) & 0xFF));
    out << header << std::string(data_bytes, '\0');
    return file;
  }
  void expect_refused(const std::string& file, const std::string& words) {
    try {
      safetensors::File::read(file);
      ADD_FAILURE() << file << " was accepted; expected: " << words;
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(words), std::string::npos) << what;
      EXPECT_NE(what.find(file), std::string::npos) << what;
    }
  }
};

TEST_F(Safetensors, EveryDtypeRoundTripsBitForBit) {
  torch::manual_seed(1);
  const auto base = torch::randn({3, 5}) * 100;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto dtype :
       {torch::kDouble,
        torch::kFloat,
        torch::kHalf,
        torch::kBFloat16,
        torch::kLong,
        torch::kInt,
        torch::kShort,
        torch::kChar,
        torch::kByte,
        torch::kBool,
        torch::kFloat8_e4m3fn,
        torch::kFloat8_e5m2}) {
    tensors.emplace_back(
        std::string("t.") + safetensors::dtype_name(dtype), base.to(dtype));
  }
  tensors.emplace_back("scalar", torch::tensor(3.5));
  tensors.emplace_back("empty", torch::empty({0, 4}));
  tensors.emplace_back("strided", base.t()); // written contiguous
  // Empty tensors share their offset with the next tensor, whatever the
  // order of their names.
  tensors.emplace_back("z.empty", torch::empty({0}));
  tensors.emplace_back("a.after_empty", torch::ones({2}));
  const std::string written = path("a.safetensors");
  safetensors::write(written, tensors, {{"format", "pt"}});

  const auto file = safetensors::File::read(written);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const auto back = file.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(
        back.reshape(-1).view(torch::kByte),
        t.contiguous().reshape(-1).view(torch::kByte)))
        << name;
  }
  EXPECT_FALSE(fs::exists(written + ".tmp." + std::to_string(::getpid())));
}

TEST_F(Safetensors, MalformedFilesAreRefusedWithClearErrors) {
  const std::string ok =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(safetensors::File::read(raw("ok", ok, 8)));
  {
    const std::string file = path("short");
    std::ofstream(file, std::ios::binary) << "abc";
    expect_refused(file, "truncated: 3 bytes");
  }
  expect_refused(
      raw("huge", ok, 8, 1ull << 40),
      "header length 1099511627776 does not fit");
  expect_refused(raw("json", "{\"w\":", 0), "header is not valid JSON");
  expect_refused(
      raw("overflow",
          R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8e560]}})",
          8),
      "header is not valid JSON");
  expect_refused(raw("array", "[1,2]", 0), "header must be a JSON object");
  expect_refused(
      raw("dtype",
          R"({"w":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})",
          8),
      "tensor 'w' has unknown dtype \"F7\"");
  expect_refused(
      raw("fields", R"({"w":{"dtype":"F32","shape":[2]}})", 8),
      "tensor 'w' must be an object with dtype, shape and data_offsets");
  expect_refused(
      raw("outside",
          R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})",
          8),
      "lie outside the 8-byte data section");
  expect_refused(
      raw("size",
          R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
          8),
      "needs 12 bytes but its data_offsets hold 8");
  expect_refused(
      raw("negative",
          R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
          8),
      "shape must be a non-negative integer");
  expect_refused(
      raw("overflow",
          R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
          8),
      "overflows");
  expect_refused(
      raw("overlap",
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12),
      "(overlap)");
  expect_refused(
      raw("hole",
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
          12),
      "(hole)");
  expect_refused(raw("tail", ok, 16), "tensors cover 8 of the 16 data bytes");
  expect_refused(
      raw("meta", R"({"__metadata__":{"k":1}})", 0),
      "__metadata__['k'] must be a string");
  expect_refused(path("missing"), "cannot open");
  const auto file = safetensors::File::read(raw("ok2", ok, 8));
  EXPECT_THROW(file.tensor("nope"), std::runtime_error);
}

} // namespace
} // namespace qat
