// English text for language-model training: the King James Bible from
// Debian's bible-kjv (31102 verses, 4.3 MB), read through its `bible`
// program once and cached, with a byte-level tokenizer.
#pragma once

#include <torch/types.h>

#include <string>
#include <string_view>

#include "trainers/data/datasets.h"

namespace qat::data {

// Tokens are the text's bytes: vocabulary 256, lossless for any UTF-8.
struct ByteTokenizer {
  static constexpr int64_t kVocabSize = 256;
  torch::Tensor encode(std::string_view text) const; // int64 [n]
  std::string decode(const torch::Tensor& tokens) const;
};

// The whole text, one verse per line without its reference ("Ge1:1 "). The
// first run calls the `bible` program and caches the result in `cache_dir`;
// throws std::runtime_error when the program is missing or its output is not
// the expected text.
std::string kjv_text(const std::string& cache_dir = data_cache_dir());

struct TextSplits {
  torch::Tensor train, validation; // int64 tokens
};

// Byte tokens of the KJV text; the last `validation_fraction` of the text (a
// contiguous tail, so no verse is in both) is the validation split.
TextSplits load_kjv(
    double validation_fraction = 0.05,
    const std::string& cache_dir = data_cache_dir());

// `batch` windows of length + 1 tokens (inputs and next-token targets) at
// start positions drawn from a generator seeded by `seed`: int64
// [batch, length + 1].
torch::Tensor sample_windows(
    const torch::Tensor& tokens,
    int64_t batch,
    int64_t length,
    uint64_t seed);

} // namespace qat::data
