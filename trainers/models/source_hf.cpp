// model.type hf: a Hugging Face checkpoint folder with its tokenizer.json.
#include <filesystem>

#include "trainers/error_text.h"
#include "trainers/models/hf_architectures.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/models/sources.h"
#include "trainers/text/hf_tokenizer.h"

namespace qat::models {
namespace fs = std::filesystem;
namespace {

// What travels with exports, where the folder has it.
const char* const kTokenizerFiles[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja"};

class HfLlama final : public LanguageModelSource {
 public:
  HfLlama(const recipe::Recipe& r, int64_t context) : dir_(model_path(r)) {
    try {
      config_ = hf_config(dir_);
      if (!fs::exists(fs::path(dir_) / "tokenizer.json"))
        throw std::runtime_error(
            (fs::path(dir_) / "tokenizer.json").string() +
            ": missing (the model's tokenizer)");
      hf_ = std::make_shared<text::HfTokenizer>(
          text::HfTokenizer::from_folder(dir_));
      tokenizer_ = data::hf_tokenizer(*hf_);
    } catch (const std::exception& e) {
      r.fail_at("model.path", train::error_text(e));
    }
    if (tokenizer_->vocab_size() > config_.vocab_size())
      r.fail_at(
          "model.path",
          dir_ + ": the tokenizer has " +
              std::to_string(tokenizer_->vocab_size()) +
              " tokens, more than the model's vocab_size " +
              std::to_string(config_.vocab_size()));
    check_context(r, config_, context);
  }
  LlamaForCausalLM build() const override {
    return load_hf_model(dir_);
  }
  std::shared_ptr<const data::Tokenizer> tokenizer() const override {
    return tokenizer_;
  }
  bool pretrained() const override {
    return true;
  }
  GgufMetadata gguf_tokenizer() const override {
    return gguf_tokenizer_metadata(*hf_);
  }
  std::vector<std::string> hf_files() const override {
    std::vector<std::string> out;
    for (const char* name : kTokenizerFiles) {
      const auto path = fs::path(dir_) / name;
      if (fs::exists(path))
        out.push_back(path.string());
    }
    return out;
  }
  std::string describe() const override {
    return "hf: " + dir_ + " (" + config_.architecture() + ")";
  }

 private:
  std::string dir_;
  LlamaConfig config_;
  std::shared_ptr<text::HfTokenizer> hf_;
  std::shared_ptr<const data::Tokenizer> tokenizer_;
};

} // namespace

std::unique_ptr<LanguageModelSource> make_hf_llama(
    const recipe::Recipe& recipe,
    int64_t context) {
  return std::make_unique<HfLlama>(recipe, context);
}

} // namespace qat::models
