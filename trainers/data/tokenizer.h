// What text tasks need of a tokenizer, whichever kind the model brings:
// bytes (models trained from scratch), a GGUF file's BPE (trainers/data/bpe.h)
// or a Hugging Face tokenizer.json (trainers/text/hf_tokenizer.h). Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qat::gguf {
class File;
}
namespace qat::text {
class HfTokenizer;
}

namespace qat::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` with no special tokens added (control tokens written in
  // the text, "<|im_start|>", encode as themselves).
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // -1 when the tokenizer has none.
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  // Whether encode() starts a document with BOS (add_bos_token).
  virtual bool adds_bos() const {
    return false;
  }
  // The Jinja chat template the tokenizer ships, or "", and the strings
  // templates use for its special tokens (bos_token, eos_token).
  virtual std::string chat_template() const {
    return "";
  }
  virtual std::map<std::string, std::string> template_tokens() const {
    return {};
  }
  // A text that changes whenever the ids could (caches of tokenized data are
  // keyed by it).
  virtual std::string fingerprint() const = 0;
};

// A byte per token, vocabulary 256; no BOS or EOS.
std::shared_ptr<const Tokenizer> byte_tokenizer();
// The BPE of a GGUF file's tokenizer.ggml.* metadata.
std::shared_ptr<const Tokenizer> gguf_tokenizer(const gguf::File& file);
// tokenizer.json (+ tokenizer_config.json, chat_template.jinja) in `folder`.
std::shared_ptr<const Tokenizer> hf_tokenizer(const std::string& folder);
// One already read (the adapter shares its tables).
std::shared_ptr<const Tokenizer> hf_tokenizer(const text::HfTokenizer& hf);

// 64-bit FNV-1a, for cache keys (not for security).
uint64_t fnv1a(std::string_view bytes, uint64_t seed = 0xcbf29ce484222325ull);
std::string hex64(uint64_t value);

} // namespace qat::data
