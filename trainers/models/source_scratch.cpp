// model.type llama: a decoder over bytes, trained from scratch.
#include "trainers/error_text.h"
#include "trainers/models/sources.h"

namespace qat::models {
namespace {

class ScratchLlama final : public LanguageModelSource {
 public:
  ScratchLlama(const recipe::Recipe& r, int64_t context) {
    config_ =
        LlamaConfig()
            .vocab_size(256)
            .hidden_size(r.get<int64_t>("model.hidden_size"))
            .intermediate_size(r.get<int64_t>("model.intermediate_size"))
            .num_hidden_layers(r.get<int64_t>("model.num_hidden_layers"))
            .num_attention_heads(r.get<int64_t>("model.num_attention_heads"))
            .num_key_value_heads(r.get<int64_t>("model.num_key_value_heads"))
            .max_position_embeddings(context);
    try {
      config_.validate();
    } catch (const std::exception& e) {
      r.fail_at("model", train::error_text(e));
    }
  }
  LlamaForCausalLM build() const override {
    return LlamaForCausalLM(config_);
  }
  std::shared_ptr<const data::Tokenizer> tokenizer() const override {
    return data::byte_tokenizer();
  }
  bool pretrained() const override {
    return false;
  }
  std::string describe() const override {
    return "llama from scratch over bytes";
  }

 private:
  LlamaConfig config_;
};

} // namespace

std::unique_ptr<LanguageModelSource> make_scratch_llama(
    const recipe::Recipe& recipe,
    int64_t context) {
  return std::make_unique<ScratchLlama>(recipe, context);
}

} // namespace qat::models
