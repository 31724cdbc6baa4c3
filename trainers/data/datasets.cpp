#include "trainers/data/datasets.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "qat/export/safetensors.h"
#include "trainers/data/gz_file.h"
#include "trainers/data/idx.h"

namespace qat::data {
namespace {

// "size:mtime" of a file, so that a changed source invalidates the cache.
std::string file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw std::runtime_error("data file '" + path + "' does not exist");
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtime);
}

ImageDataset images_and_labels(
    const std::string& images_path,
    const std::string& labels_path,
    const torch::Tensor& images_u8,
    const torch::Tensor& labels_u8) {
  if (images_u8.dim() != 3) {
    throw std::runtime_error(
        "IDX file '" + images_path + "': images must have 3 dimensions, got " +
        std::to_string(images_u8.dim()));
  }
  if (labels_u8.dim() != 1 || labels_u8.size(0) != images_u8.size(0)) {
    throw std::runtime_error(
        "IDX file '" + labels_path + "' holds " +
        std::to_string(labels_u8.numel()) + " labels but '" + images_path +
        "' holds " + std::to_string(images_u8.size(0)) + " images");
  }
  if (labels_u8.numel() > 0 && labels_u8.max().item<int>() > 9) {
    throw std::runtime_error(
        "IDX file '" + labels_path + "': label " +
        std::to_string(labels_u8.max().item<int>()) + " is outside 0..9");
  }
  return {
      images_u8.unsqueeze(1).to(torch::kFloat).div_(255.0f),
      labels_u8.to(torch::kLong)};
}

} // namespace

std::string data_cache_dir() {
  if (const char* cache = std::getenv("QAT_CACHE"))
    return std::string(cache) + "/data";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/qat/data";
}

ImageSplits load_fashion_mnist(
    const std::string& dir,
    const std::string& cache_dir) {
  const std::string files[4] = {
      dir + "/train-images-idx3-ubyte.gz",
      dir + "/train-labels-idx1-ubyte.gz",
      dir + "/t10k-images-idx3-ubyte.gz",
      dir + "/t10k-labels-idx1-ubyte.gz"};
  std::string stamp;
  for (const auto& f : files)
    stamp += file_stamp(f) + ";";

  const std::string cache = cache_dir + "/fashion_mnist.safetensors";
  torch::Tensor raw[4];
  bool cached = false;
  try {
    const auto file = safetensors::File::read(cache);
    if (file.metadata().count("sources") &&
        file.metadata().at("sources") == stamp) {
      const char* names[4] = {
          "train_images", "train_labels", "test_images", "test_labels"};
      for (int i = 0; i < 4; ++i)
        raw[i] = file.tensor(names[i]);
      cached = true;
    }
  } catch (const std::runtime_error&) {
    // No cache yet, or a damaged one: decode the sources again below.
  }
  if (!cached) {
    for (int i = 0; i < 4; ++i)
      raw[i] = read_idx_u8(files[i]);
    std::error_code ignored;
    std::filesystem::create_directories(cache_dir, ignored);
    try {
      safetensors::write(
          cache,
          {{"train_images", raw[0]},
           {"train_labels", raw[1]},
           {"test_images", raw[2]},
           {"test_labels", raw[3]}},
          {{"sources", stamp}});
    } catch (const std::runtime_error&) {
      // A read-only cache only costs the decoding time next run.
    }
  }
  return {
      images_and_labels(files[0], files[1], raw[0], raw[1]),
      images_and_labels(files[2], files[3], raw[2], raw[3])};
}

ImageDataset load_digits(const std::string& path) {
  constexpr int kPixels = 64;
  GzFile file(path, "digits CSV");
  const std::string text = file.read_all();
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  size_t line_start = 0;
  for (int line = 1; line_start < text.size(); ++line) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos)
      line_end = text.size();
    const std::string row = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (row.empty())
      continue;
    const auto where = [&] { return "line " + std::to_string(line) + ": "; };
    size_t pos = 0;
    for (int column = 0; column <= kPixels; ++column) {
      const size_t comma = row.find(',', pos);
      const bool last = column == kPixels;
      if ((comma == std::string::npos) != last) {
        file.fail(
            where() + "expected " + std::to_string(kPixels + 1) +
            " comma-separated values");
      }
      const std::string cell =
          row.substr(pos, last ? std::string::npos : comma - pos);
      pos = comma + 1;
      char* end = nullptr;
      const double value = std::strtod(cell.c_str(), &end);
      if (cell.empty() || *end != '\0' || value != std::floor(value)) {
        file.fail(where() + "'" + cell + "' is not a whole number");
      }
      const double max = last ? 9 : 16;
      if (value < 0 || value > max) {
        file.fail(
            where() + (last ? "label " : "pixel ") + cell + " is outside 0.." +
            std::to_string(static_cast<int>(max)));
      }
      if (last) {
        labels.push_back(static_cast<int64_t>(value));
      } else {
        pixels.push_back(static_cast<float>(value / 16.0));
      }
    }
  }
  if (labels.empty())
    file.fail("holds no rows");
  const auto n = static_cast<int64_t>(labels.size());
  return {
      torch::tensor(pixels).view({n, 1, 8, 8}),
      torch::tensor(labels, torch::kLong)};
}

std::pair<ImageDataset, ImageDataset> split(
    const ImageDataset& data,
    int64_t validation_size,
    uint64_t seed) {
  if (validation_size < 0 || validation_size > data.size()) {
    throw std::invalid_argument(
        "split: validation_size " + std::to_string(validation_size) +
        " is outside 0.." + std::to_string(data.size()));
  }
  const auto order = torch::randperm(
      data.size(), at::detail::createCPUGenerator(seed), torch::kLong);
  const auto train_idx = order.slice(0, 0, data.size() - validation_size);
  const auto val_idx = order.slice(0, data.size() - validation_size);
  auto take = [&](const torch::Tensor& idx) {
    return ImageDataset{
        data.images.index_select(0, idx), data.labels.index_select(0, idx)};
  };
  return {take(train_idx), take(val_idx)};
}

std::vector<torch::Tensor> batch_indices(
    int64_t n,
    int64_t batch_size,
    bool shuffle,
    uint64_t seed,
    bool drop_last) {
  if (batch_size <= 0) {
    throw std::invalid_argument(
        "batch_indices: batch_size must be positive, got " +
        std::to_string(batch_size));
  }
  const auto order = shuffle
      ? torch::randperm(n, at::detail::createCPUGenerator(seed), torch::kLong)
      : torch::arange(n, torch::kLong);
  std::vector<torch::Tensor> batches;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t end = std::min(n, start + batch_size);
    if (drop_last && end - start < batch_size)
      break;
    batches.push_back(order.slice(0, start, end));
  }
  return batches;
}

} // namespace qat::data
