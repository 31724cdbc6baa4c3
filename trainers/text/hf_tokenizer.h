// A Torch-free reader of Hugging Face `tokenizer.json` files, bit-exact with the `tokenizers`
// library (0.23) for the BPE models in use: byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3,
// SmolLM2) and SentencePiece-style BPE with byte fallback (Llama 2, Mistral v0.1, TinyLlama).
//
// Pipeline, as in `tokenizers`: added tokens are cut out of the raw text (leftmost-longest),
// each remaining piece is normalized, normalized added tokens are cut out of that, the
// pre-tokenizer splits the rest into words, each word goes through BPE, and the post-processor
// adds BOS / EOS when asked. The regular expressions of the known pre-tokenizers are
// hand-written matchers over code points (trainers/text/unicode_tables.inc); any other pattern,
// model type, normalizer, pre-tokenizer, decoder or post-processor is refused at load time by
// name, with the file and the JSON key path in a one-line std::runtime_error.
//
// All const member functions are thread-safe; copies share the (immutable) tables.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qat::text {

// llama.cpp's token types (gguf.TokenType).
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5, // an id no token has (written as "[PAD<id>]")
  kByte = 6,
};

class HfTokenizer {
 public:
  // DIR/tokenizer.json, plus DIR/tokenizer_config.json and DIR/chat_template.jinja when they
  // exist (the .jinja file is read when the config has no chat_template).
  static HfTokenizer from_folder(const std::string& dir);
  static HfTokenizer from_file(
      const std::string& tokenizer_json,
      const std::string& tokenizer_config_json = "");

  // As tokenizers' Tokenizer.encode(text, add_special_tokens=...).ids. With
  // add_special_tokens and no post_processor in tokenizer.json, the config's add_bos_token /
  // add_eos_token decide. Throws std::invalid_argument on invalid UTF-8.
  std::vector<int32_t> encode(
      std::string_view text,
      bool add_special_tokens = false) const;
  // As tokenizers' Tokenizer.decode(ids, skip_special_tokens=...): unknown ids are skipped.
  std::string decode(
      const std::vector<int32_t>& ids,
      bool skip_special_tokens = false) const;

  // One more than the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const;
  int32_t bos_id() const; // -1 when none
  int32_t eos_id() const; // -1 when none
  int32_t unk_id() const; // -1 when none
  int32_t pad_id() const; // tokenizer_config.json's pad_token; -1 when none
  const std::string& bos_token() const; // "" when none
  const std::string& eos_token() const; // "" when none
  std::optional<int32_t> token_id(
      std::string_view token) const; // added tokens first
  std::optional<std::string> id_to_token(int32_t id) const; // as decode sees it
  bool is_special(int32_t id) const; // an added token with "special": true
  const std::string& chat_template() const; // "" when none
  // Whether encode(text, true) starts with BOS (ends with EOS): with a post_processor, whether
  // its single template starts (ends) with a special token; without, the config's
  // add_bos_token / add_eos_token.
  bool add_bos() const;
  bool add_eos() const;

  // What a GGUF export needs (llama.cpp's tokenizer.ggml.* keys).
  // The token strings by id, as tokenizer.json stores them (ids no token has: "[PAD<id>]").
  std::vector<std::string> tokens() const;
  std::vector<TokenType> token_types() const;
  // "a b" strings in rank order, as tokenizer.json lists them.
  const std::vector<std::string>& merges() const;
  // "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE).
  const std::string& ggml_model() const;
  // llama.cpp's pre-tokenizer name: "smollm", "llama-bpe", "qwen2", "gpt-2" or "default".
  const std::string& ggml_pre() const;

  struct Impl;

 private:
  explicit HfTokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

} // namespace qat::text
