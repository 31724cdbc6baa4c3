// The Llama-style decoder to and from GGUF, llama.cpp's format:
//
//   load_llama_gguf   a GGUF llama model (SmolLM2's, say) as a float
//                     LlamaForCausalLM: hyperparameters from the llama.* keys,
//                     every tensor dequantized, Q/K rows un-permuted
//   save_llama_gguf   a (converted) decoder as GGUF v3: GGUF-quantized layers
//                     as their Q8_0 / Q4_0 blocks, byte for byte what was
//                     trained; everything else F32; the llama.* keys; Q/K rows
//                     permuted as llama.cpp expects; the tokenizer metadata of
//                     another GGUF file (the one the model came from)
//
// Tensor names map Hugging Face's ("model.layers.3.self_attn.q_proj.weight")
// to llama.cpp's ("blk.3.attn_q.weight").
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "qat/export/gguf.h"
#include "qat/prepare.h"
#include "trainers/models/llama.h"
#include "trainers/text/hf_tokenizer.h"

namespace qat::models {

// llama.cpp's name of one of our parameters; "" when it has none.
std::string gguf_tensor_name(const std::string& hf_name);

LlamaConfig llama_config_from_gguf(const gguf::File& file);
LlamaForCausalLM load_llama_gguf(const gguf::File& file);

struct GgufExportReport {
  int64_t file_bytes = 0;
  int64_t float_bytes = 0; // the same weights in float32
  int64_t quantized_tensors = 0;
};
// `tokenizer`: the tokenizer.* keys to write (tokenizer_metadata()).
GgufExportReport save_llama_gguf(
    LlamaForCausalLMImpl& model,
    const std::string& path,
    const std::string& name,
    const std::vector<std::pair<std::string, gguf::Value>>& tokenizer);
// The same with the tokenizer of another GGUF file (the one the model came
// from), or none.
GgufExportReport save_llama_gguf(
    LlamaForCausalLMImpl& model,
    const std::string& path,
    const std::string& name,
    const gguf::File* tokenizer_source = nullptr);

// The scheme that gives each layer of `model` the GGUF type llama.cpp's
// llama-quantize gives its tensor for `preset` ("q4_k_m", "q5_k_m", "q6_k";
// trainers/models/gguf_mix.h): one rule per quantized layer, by its exact
// name, so that QAT trains the types the runtime will serve. What llama.cpp
// keeps float stays float; a tensor it would store as F16 (a row length not
// a multiple of 32) stays float too and exports as F32. Throws
// std::invalid_argument naming an unknown preset.
QuantConfig gguf_mix_scheme(
    LlamaForCausalLMImpl& model,
    const std::string& preset);

// A tokenizer.json tokenizer as llama.cpp's tokenizer.ggml.* keys (model,
// pre, tokens, token_type, merges, special ids, add_bos / add_eos) and
// tokenizer.chat_template.
std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(
    const text::HfTokenizer& tokenizer);

} // namespace qat::models
