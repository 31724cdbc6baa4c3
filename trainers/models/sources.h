// The language models a text task trains, by model.type, each in its own
// file; adding a source is one more file and one more row in
// language_model_types():
//
//   llama   a decoder trained from scratch over bytes (source_scratch.cpp)
//   gguf    a pretrained GGUF llama model at model.path with its BPE
//           tokenizer, e.g. SmolLM2-135M (source_gguf.cpp)
//   hf      a Hugging Face checkpoint folder at model.path: config.json,
//           safetensors (sharded or not), tokenizer.json (source_hf.cpp)
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qat/export/gguf.h"
#include "trainers/data/tokenizer.h"
#include "trainers/models/llama.h"
#include "trainers/recipe.h"

namespace qat::models {

using GgufMetadata = std::vector<std::pair<std::string, gguf::Value>>;

class LanguageModelSource {
 public:
  virtual ~LanguageModelSource() = default;
  // A fresh float model (the pretrained weights, or initialised).
  virtual LlamaForCausalLM build() const = 0;
  virtual std::shared_ptr<const data::Tokenizer> tokenizer() const = 0;
  // Whether build() gives trained weights (a fine-tuned float baseline then
  // measures what QAT adds beyond adapting to the data).
  virtual bool pretrained() const = 0;
  // The tokenizer.* keys a GGUF export of this model carries.
  virtual GgufMetadata gguf_tokenizer() const {
    return {};
  }
  // Files that travel with Hugging Face-style exports (tokenizer.json,
  // tokenizer_config.json, ...), as paths.
  virtual std::vector<std::string> hf_files() const {
    return {};
  }
  // "hf: /models/Qwen2.5-0.5B (Qwen2ForCausalLM, 494M parameters)"
  virtual std::string describe() const = 0;
};

std::vector<std::string> language_model_types();

// model.type's source; `context` is data.context (checked against the
// model's max_position_embeddings and sliding window). Errors name the key.
std::unique_ptr<LanguageModelSource> make_language_model(
    const recipe::Recipe& recipe,
    int64_t context);

// model.path as given, or in the models folder of qat's cache (where
// scripts/setup.sh puts SmolLM2).
std::string model_path(const recipe::Recipe& recipe);

std::unique_ptr<LanguageModelSource> make_scratch_llama(
    const recipe::Recipe& recipe,
    int64_t context);
std::unique_ptr<LanguageModelSource> make_gguf_llama(
    const recipe::Recipe& recipe,
    int64_t context);
std::unique_ptr<LanguageModelSource> make_hf_llama(
    const recipe::Recipe& recipe,
    int64_t context);

// The context fits the model: max_position_embeddings and any sliding window.
void check_context(
    const recipe::Recipe& recipe,
    const LlamaConfig& config,
    int64_t context);

} // namespace qat::models
