// Byte-level BPE (GPT-2's scheme) built from a GGUF file's tokenizer metadata
// (tokenizer.ggml.tokens / merges / token_type; model "gpt2"), as llama.cpp
// builds it. Pre-tokenization follows the file's tokenizer.ggml.pre:
// "smollm" / "starcoder" split every digit apart first, then GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Control tokens written in the text ("<|im_start|>") encode as themselves.
//
// Unicode classes: ASCII exactly; other code points count as letters, except
// the General Punctuation block (U+2000..U+206F), which counts as punctuation,
// and the Unicode spaces; enough for English text, a limit for other scripts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qat/export/gguf.h"

namespace qat::data {

class BpeTokenizer {
 public:
  static BpeTokenizer from_gguf(const gguf::File& file);

  std::vector<int64_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int64_t>& ids) const;
  int64_t vocab_size() const {
    return static_cast<int64_t>(tokens_.size());
  }
  int64_t bos_id() const {
    return bos_;
  }
  int64_t eos_id() const {
    return eos_;
  }
  // The pre-tokenized pieces of `text` (no control tokens), for tests.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  void encode_piece(const std::string& piece, std::vector<int64_t>& out) const;

  std::vector<std::string> tokens_; // in GPT-2's byte-to-unicode alphabet
  std::unordered_map<std::string, int64_t> ids_;
  std::unordered_map<std::string, int64_t> merge_rank_; // "a b" -> rank
  std::vector<std::string> control_; // by length, longest first
  bool split_digits_ = false;
  int64_t bos_ = -1, eos_ = -1;
};

} // namespace qat::data
