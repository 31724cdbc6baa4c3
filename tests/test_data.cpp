// Data sets: the real Fashion-MNIST files from Debian's package (counts, label
// histograms, pixel statistics), corrupt files refused with errors naming the
// file, the cache, and deterministic splits and batches.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "trainers/data/datasets.h"
#include "trainers/data/idx.h"
#include "trainers/data/text.h"

namespace qat::data {
namespace {

// A scratch folder whose files are removed one by one (see
// test_safetensors.cpp on std::filesystem::remove_all).
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = "/tmp/qat_data_XXXXXX";
    if (!::mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
  }
  ~ScratchDir() {
    for (const auto& f : files_)
      std::remove(f.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string file(const std::string& name) {
    files_.push_back(dir_ + "/" + name);
    return files_.back();
  }
  const std::string& path() const {
    return dir_;
  }

 private:
  std::string dir_;
  std::vector<std::string> files_;
};

// Writes an IDX file, gzip-compressed: header bytes then body.
void write_gz(const std::string& path, std::string_view bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  if (!bytes.empty()) {
    ASSERT_EQ(
        gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
        static_cast<int>(bytes.size()));
  }
  gzclose(f);
}

void write_gz(
    const std::string& path,
    const std::vector<unsigned char>& bytes) {
  write_gz(
      path,
      std::string_view(
          reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::vector<unsigned char> idx_bytes(
    std::vector<uint32_t> dims,
    size_t body_bytes,
    unsigned char type = 0x08,
    unsigned char value = 1) {
  std::vector<unsigned char> b = {
      0, 0, type, static_cast<unsigned char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift : {24, 16, 8, 0})
      b.push_back(static_cast<unsigned char>((d >> shift) & 0xFF));
  }
  b.insert(b.end(), body_bytes, value);
  return b;
}

void expect_refused(
    const std::function<void()>& call,
    const std::string& file,
    const std::string& words) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected an error about '" << words << "'";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(words), std::string::npos) << what;
    EXPECT_NE(what.find(file), std::string::npos) << what;
  }
}

TEST(FashionMnist, RealFilesHaveTheKnownCountsLabelsAndPixels) {
  ScratchDir cache;
  const auto fm = load_fashion_mnist(kFashionMnistDir, cache.path());
  cache.file("fashion_mnist.safetensors"); // written by the loader
  ASSERT_EQ(fm.train.size(), 60000);
  ASSERT_EQ(fm.test.size(), 10000);
  EXPECT_EQ(fm.train.images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  // Balanced classes: 6000 / 1000 of each of the 10 labels.
  EXPECT_TRUE(torch::equal(
      torch::bincount(fm.train.labels), torch::full({10}, 6000, torch::kLong)));
  EXPECT_TRUE(torch::equal(
      torch::bincount(fm.test.labels), torch::full({10}, 1000, torch::kLong)));
  EXPECT_EQ(fm.train.images.min().item<float>(), 0.0f);
  EXPECT_EQ(fm.train.images.max().item<float>(), 1.0f);
  // The published statistics of the training images: mean 0.2860, std 0.3530.
  EXPECT_NEAR(fm.train.images.mean().item<double>(), 0.2860, 5e-4);
  EXPECT_NEAR(fm.train.images.std().item<double>(), 0.3530, 5e-4);

  // The second load comes from the cache and gives the same tensors.
  const auto again = load_fashion_mnist(kFashionMnistDir, cache.path());
  EXPECT_TRUE(torch::equal(again.test.images, fm.test.images));
  EXPECT_TRUE(torch::equal(again.train.labels, fm.train.labels));
}

TEST(Idx, CorruptFilesAreRefusedNamingTheFile) {
  ScratchDir dir;
  const auto ok = dir.file("ok.gz");
  write_gz(ok, idx_bytes({2, 3}, 6));
  EXPECT_EQ(read_idx_u8(ok).sizes(), (std::vector<int64_t>{2, 3}));

  const auto truncated = dir.file("truncated.gz");
  write_gz(truncated, idx_bytes({2, 3}, 4));
  expect_refused(
      [&] { read_idx_u8(truncated); },
      truncated,
      "truncated: 4 of 6 data bytes");
  const auto trailing = dir.file("trailing.gz");
  write_gz(trailing, idx_bytes({2, 3}, 7));
  expect_refused(
      [&] { read_idx_u8(trailing); },
      trailing,
      "has bytes after the 6 data bytes");
  const auto magic = dir.file("magic.gz");
  auto bad = idx_bytes({2}, 2);
  bad[0] = 0x1f;
  write_gz(magic, bad);
  expect_refused([&] { read_idx_u8(magic); }, magic, "bad magic");
  const auto type = dir.file("type.gz");
  write_gz(type, idx_bytes({2}, 8, 0x0D));
  expect_refused([&] { read_idx_u8(type); }, type, "is not 0x08");
  const auto huge = dir.file("huge.gz");
  write_gz(huge, idx_bytes({0xFFFFFFFF, 0xFFFFFFFF}, 0));
  expect_refused([&] { read_idx_u8(huge); }, huge, "multiply past 2^31");
  const auto not_gzip = dir.file("garbage.gz");
  {
    // A gzip header followed by garbage: the deflate stream is corrupt.
    FILE* f = std::fopen(not_gzip.c_str(), "wb");
    const unsigned char header[] = {
        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    std::fwrite(header, 1, sizeof header, f);
    std::fclose(f);
  }
  expect_refused([&] { read_idx_u8(not_gzip); }, not_gzip, "IDX file");
  expect_refused(
      [&] { read_idx_u8(dir.path() + "/missing.gz"); },
      "missing.gz",
      "cannot open");

  // Fashion-MNIST with inconsistent files: fewer labels than images, and a
  // label outside 0..9.
  for (const char* name :
       {"train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"})
    write_gz(dir.file(name), idx_bytes({4, 2, 2}, 16));
  write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), idx_bytes({4}, 4, 0x08, 3));
  const auto labels = dir.file("train-labels-idx1-ubyte.gz");
  write_gz(labels, idx_bytes({3}, 3));
  expect_refused(
      [&] { load_fashion_mnist(dir.path(), dir.path()); },
      labels,
      "holds 3 labels but");
  write_gz(labels, idx_bytes({4}, 4, 0x08, 12));
  expect_refused(
      [&] { load_fashion_mnist(dir.path(), dir.path()); },
      labels,
      "label 12 is outside 0..9");
  dir.file("fashion_mnist.safetensors");
}

TEST(Digits, RealFileHasTheDocumentedShape) {
  const auto digits = load_digits();
  // scikit-learn's documentation: 1797 samples of 8x8 pixels 0..16, 10
  // classes of about 180 each.
  ASSERT_EQ(digits.size(), 1797);
  EXPECT_EQ(digits.images.sizes(), (std::vector<int64_t>{1797, 1, 8, 8}));
  EXPECT_EQ(digits.images.min().item<float>(), 0.0f);
  EXPECT_EQ(digits.images.max().item<float>(), 1.0f);
  const auto counts = torch::bincount(digits.labels);
  ASSERT_EQ(counts.numel(), 10);
  EXPECT_GE(counts.min().item<int64_t>(), 170);
  EXPECT_LE(counts.max().item<int64_t>(), 190);
  // Pixels are multiples of 1/16.
  EXPECT_TRUE(
      torch::equal(digits.images * 16, torch::round(digits.images * 16)));
}

TEST(Digits, MalformedRowsNameTheLine) {
  ScratchDir dir;
  std::string good;
  for (int i = 0; i < 64; ++i)
    good += "3,";
  auto write = [&](const std::string& name, const std::string& text) {
    const auto path = dir.file(name);
    write_gz(path, std::string_view(text));
    return path;
  };
  const auto ok = write("ok.csv.gz", good + "7\n" + good + "2\n");
  EXPECT_EQ(load_digits(ok).size(), 2);
  const auto short_row = write("short.csv.gz", good + "7\n3,4\n");
  expect_refused(
      [&] { load_digits(short_row); },
      short_row,
      "line 2: expected 65 comma-separated values");
  const auto label = write("label.csv.gz", good + "12\n");
  expect_refused(
      [&] { load_digits(label); }, label, "line 1: label 12 is outside 0..9");
  const auto pixel = write("pixel.csv.gz", "17," + good.substr(2) + "1\n");
  expect_refused(
      [&] { load_digits(pixel); }, pixel, "line 1: pixel 17 is outside 0..16");
  const auto text = write("text.csv.gz", "x," + good.substr(2) + "1\n");
  expect_refused([&] { load_digits(text); }, text, "'x' is not a whole number");
  const auto empty = write("empty.csv.gz", "");
  expect_refused([&] { load_digits(empty); }, empty, "holds no rows");
}

TEST(Batching, SplitsAndBatchesAreDeterministic) {
  ImageDataset data{torch::randn({100, 1, 2, 2}), torch::arange(100)};
  const auto [train, val] = split(data, 20, 7);
  EXPECT_EQ(train.size(), 80);
  EXPECT_EQ(val.size(), 20);
  // Disjoint and complete.
  EXPECT_TRUE(torch::equal(
      std::get<0>(torch::sort(torch::cat({train.labels, val.labels}))),
      torch::arange(100)));
  EXPECT_TRUE(torch::equal(split(data, 20, 7).second.labels, val.labels));
  EXPECT_FALSE(torch::equal(split(data, 20, 8).second.labels, val.labels));

  const auto batches = batch_indices(10, 4, true, 3);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[2].numel(), 2);
  EXPECT_EQ(batch_indices(10, 4, true, 3, /*drop_last=*/true).size(), 2u);
  EXPECT_TRUE(torch::equal(batch_indices(10, 4, true, 3)[0], batches[0]));
  EXPECT_TRUE(
      torch::equal(batch_indices(10, 10, false, 0)[0], torch::arange(10)));
  EXPECT_THROW(batch_indices(10, 0, false, 0), std::invalid_argument);
  EXPECT_THROW(split(data, 101, 0), std::invalid_argument);
}

TEST(Kjv, TextIsTheWholeBibleWithoutReferences) {
  ScratchDir cache;
  const std::string text = kjv_text(cache.path());
  cache.file("kjv.txt");
  EXPECT_EQ(
      text.rfind("In the beginning God created the heaven and the earth.\n", 0),
      0u);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 31102);
  EXPECT_GT(text.size(), 4'000'000u);
  EXPECT_EQ(text.find("Ge1:1"), std::string::npos);
  // Cached: the second call reads the file and returns the same text.
  EXPECT_EQ(kjv_text(cache.path()), text);

  const ByteTokenizer tok;
  const auto tokens = tok.encode(text);
  EXPECT_EQ(tokens.numel(), static_cast<int64_t>(text.size()));
  EXPECT_EQ(tok.decode(tokens), text);
  EXPECT_LT(tokens.max().item<int64_t>(), ByteTokenizer::kVocabSize);

  const auto splits = load_kjv(0.05, cache.path());
  EXPECT_EQ(splits.train.numel() + splits.validation.numel(), tokens.numel());
  EXPECT_NEAR(splits.validation.numel(), 0.05 * tokens.numel(), 1.0);
  EXPECT_TRUE(
      torch::equal(splits.validation, tokens.slice(0, splits.train.numel())));
  EXPECT_THROW(load_kjv(1.5, cache.path()), std::invalid_argument);
}

TEST(Kjv, WindowsAreSlicesOfTheTokens) {
  const auto tokens = torch::arange(1000);
  const auto windows = sample_windows(tokens, 8, 16, 5);
  ASSERT_EQ(windows.sizes(), (std::vector<int64_t>{8, 17}));
  // Consecutive tokens: each window is a slice.
  EXPECT_TRUE(
      torch::equal(windows.diff(1, 1), torch::ones({8, 16}, torch::kLong)));
  EXPECT_TRUE(torch::equal(sample_windows(tokens, 8, 16, 5), windows));
  EXPECT_THROW(
      sample_windows(tokens.slice(0, 0, 10), 2, 16, 0), std::invalid_argument);
}

} // namespace
} // namespace qat::data
