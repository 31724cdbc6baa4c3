#include "trainers/data/tokenizer.h"

#include "qat/export/gguf.h"
#include "trainers/data/bpe.h"
#include "trainers/text/hf_tokenizer.h"

namespace qat::data {
namespace {

// A key that changes with the vocabulary, the merges or `options`.
std::string vocabulary_fingerprint(
    const std::string& kind,
    const std::vector<std::string>& tokens,
    const std::vector<std::string>& merges,
    const std::string& options) {
  uint64_t h = fnv1a(kind);
  for (const auto* list : {&tokens, &merges}) {
    for (const auto& item : *list)
      h = fnv1a(std::string_view(item.c_str(), item.size() + 1), h);
    h = fnv1a("|", h);
  }
  return kind + " " + hex64(h) + " " + options;
}

class Bytes final : public Tokenizer {
 public:
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i)
      ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    for (const int64_t id : ids)
      text += static_cast<char>(id);
    return text;
  }
  int64_t vocab_size() const override {
    return 256;
  }
  int64_t bos_id() const override {
    return -1;
  }
  int64_t eos_id() const override {
    return -1;
  }
  std::string fingerprint() const override {
    return "bytes";
  }
};

class Gguf final : public Tokenizer {
 public:
  explicit Gguf(const gguf::File& file) : bpe_(BpeTokenizer::from_gguf(file)) {
    const auto tokens = file.get("tokenizer.ggml.tokens").as_strings();
    fingerprint_ = vocabulary_fingerprint(
        "gguf-bpe",
        tokens,
        file.has("tokenizer.ggml.merges")
            ? file.get("tokenizer.ggml.merges").as_strings()
            : std::vector<std::string>{},
        file.has("tokenizer.ggml.pre")
            ? file.get("tokenizer.ggml.pre").as_string()
            : "");
    if (file.has("tokenizer.chat_template"))
      template_ = file.get("tokenizer.chat_template").as_string();
    if (bpe_.bos_id() >= 0)
      special_["bos_token"] = tokens.at(bpe_.bos_id());
    if (bpe_.eos_id() >= 0)
      special_["eos_token"] = tokens.at(bpe_.eos_id());
  }
  std::vector<int64_t> encode(std::string_view text) const override {
    return bpe_.encode(text);
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    return bpe_.decode(ids);
  }
  int64_t vocab_size() const override {
    return bpe_.vocab_size();
  }
  int64_t bos_id() const override {
    return bpe_.bos_id();
  }
  int64_t eos_id() const override {
    return bpe_.eos_id();
  }
  std::string chat_template() const override {
    return template_;
  }
  std::map<std::string, std::string> template_tokens() const override {
    return special_;
  }
  std::string fingerprint() const override {
    return fingerprint_;
  }

 private:
  BpeTokenizer bpe_;
  std::string fingerprint_, template_;
  std::map<std::string, std::string> special_;
};

class HuggingFace final : public Tokenizer {
 public:
  explicit HuggingFace(const text::HfTokenizer& hf) : hf_(hf) {
    fingerprint_ = vocabulary_fingerprint(
        "hf-bpe",
        hf_.tokens(),
        hf_.merges(),
        hf_.ggml_model() + " " + hf_.ggml_pre() +
            (hf_.add_bos() ? " bos" : ""));
    if (!hf_.bos_token().empty())
      special_["bos_token"] = hf_.bos_token();
    if (!hf_.eos_token().empty())
      special_["eos_token"] = hf_.eos_token();
  }
  std::vector<int64_t> encode(std::string_view text) const override {
    const auto ids = hf_.encode(text, /*add_special_tokens=*/false);
    return {ids.begin(), ids.end()};
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    return hf_.decode(std::vector<int32_t>(ids.begin(), ids.end()));
  }
  int64_t vocab_size() const override {
    return hf_.vocab_size();
  }
  int64_t bos_id() const override {
    return hf_.bos_id();
  }
  int64_t eos_id() const override {
    return hf_.eos_id();
  }
  bool adds_bos() const override {
    return hf_.add_bos();
  }
  std::string chat_template() const override {
    return hf_.chat_template();
  }
  std::map<std::string, std::string> template_tokens() const override {
    return special_;
  }
  std::string fingerprint() const override {
    return fingerprint_;
  }

 private:
  text::HfTokenizer hf_;
  std::string fingerprint_;
  std::map<std::string, std::string> special_;
};

} // namespace

std::shared_ptr<const Tokenizer> byte_tokenizer() {
  return std::make_shared<Bytes>();
}

std::shared_ptr<const Tokenizer> gguf_tokenizer(const gguf::File& file) {
  return std::make_shared<Gguf>(file);
}

std::shared_ptr<const Tokenizer> hf_tokenizer(const std::string& folder) {
  return hf_tokenizer(text::HfTokenizer::from_folder(folder));
}

std::shared_ptr<const Tokenizer> hf_tokenizer(const text::HfTokenizer& hf) {
  return std::make_shared<HuggingFace>(hf);
}

} // namespace qat::data
