// model.type gguf: a pretrained GGUF llama model with its own BPE tokenizer.
#include "trainers/models/llama_gguf.h"
#include "trainers/models/sources.h"

namespace qat::models {
namespace {

class GgufLlama final : public LanguageModelSource {
 public:
  GgufLlama(const recipe::Recipe& r, int64_t context)
      : path_(model_path(r)),
        file_(std::make_shared<gguf::File>(gguf::File::read(path_))),
        tokenizer_(data::gguf_tokenizer(*file_)) {
    check_context(r, llama_config_from_gguf(*file_), context);
  }
  LlamaForCausalLM build() const override {
    return load_llama_gguf(*file_);
  }
  std::shared_ptr<const data::Tokenizer> tokenizer() const override {
    return tokenizer_;
  }
  bool pretrained() const override {
    return true;
  }
  GgufMetadata gguf_tokenizer() const override {
    GgufMetadata out;
    for (const auto& [key, value] : file_->metadata())
      if (key.rfind("tokenizer.", 0) == 0)
        out.emplace_back(key, value);
    return out;
  }
  std::string describe() const override {
    return "gguf: " + path_;
  }

 private:
  std::string path_;
  std::shared_ptr<gguf::File> file_;
  std::shared_ptr<const data::Tokenizer> tokenizer_;
};

} // namespace

std::unique_ptr<LanguageModelSource> make_gguf_llama(
    const recipe::Recipe& recipe,
    int64_t context) {
  return std::make_unique<GgufLlama>(recipe, context);
}

} // namespace qat::models
