// Data sets from Debian packages, prepared once and cached, with
// deterministic splits and batches.
//
// Example:
//   auto fm = qat::data::load_fashion_mnist();
//   auto [train, val] = qat::data::split(fm.train, 5000, /*seed=*/0);
//   for (const auto& idx : qat::data::batch_indices(train.size(), 128, true, 0))
//     step(train.images.index_select(0, idx), train.labels.index_select(0, idx));
#pragma once

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace qat::data {

// Debian's dataset-fashion-mnist (installed by scripts/setup.sh).
inline constexpr const char* kFashionMnistDir =
    "/usr/share/datasets/fashion-mnist";

struct ImageDataset {
  torch::Tensor images; // float32 [N, 1, H, W], pixels / 255 in [0, 1]
  torch::Tensor labels; // int64 [N]
  int64_t size() const {
    return labels.size(0);
  }
};

struct ImageSplits {
  ImageDataset train, test;
};

// The cache folder for prepared data: $QAT_CACHE/data, else
// ~/.cache/qat/data.
std::string data_cache_dir();

// Fashion-MNIST's four IDX files from `dir`: 60000 training and 10000 test
// images of 28x28 with labels 0..9. The decoded bytes are cached in
// `cache_dir` (as safetensors, keyed by the source files' sizes and times).
// Throws std::runtime_error naming the file for missing, corrupt or
// inconsistent files.
ImageSplits load_fashion_mnist(
    const std::string& dir = kFashionMnistDir,
    const std::string& cache_dir = data_cache_dir());

// scikit-learn's 8x8 handwritten digits (1797 images, labels 0..9, pixels
// 0..16), a CSV of 64 pixel columns and a label column, extracted from
// Debian's python3-sklearn by scripts/setup.sh. Images come as [N, 1, 8, 8]
// scaled to [0, 1]. Errors name the file and the line.
ImageDataset load_digits(
    const std::string& path = data_cache_dir() + "/digits.csv.gz");

// The last `validation_size` examples of a seeded permutation form the
// validation set, the rest the training set: the same split for the same seed.
std::pair<ImageDataset, ImageDataset> split(
    const ImageDataset& data,
    int64_t validation_size,
    uint64_t seed);

// Index batches over [0, n): shuffled with a generator seeded by `seed` (the
// same order for the same seed), the last batch short unless drop_last.
std::vector<torch::Tensor> batch_indices(
    int64_t n,
    int64_t batch_size,
    bool shuffle,
    uint64_t seed,
    bool drop_last = false);

} // namespace qat::data
