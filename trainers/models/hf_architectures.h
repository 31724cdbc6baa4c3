// Hugging Face decoder checkpoints as qat's LlamaForCausalLM: which
// architectures config.json may name (architectures[0]), and a checkpoint
// folder (config.json + model.safetensors or model.safetensors.index.json
// with its shards, fp32 / bf16 / fp16) loaded memory-mapped, each tensor
// converted straight into its parameter.
//
// Example:
//   auto lm = qat::models::load_hf_model("/models/Qwen2.5-0.5B");
//   auto logits = lm(tokens);
#pragma once

#include <string>
#include <vector>

#include "trainers/models/llama.h"

namespace qat::models {

// "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", ...
std::vector<std::string> hf_architectures();

// The config.json of the checkpoint folder `dir`: throws std::runtime_error
// naming the folder when it is none, config.json when it is missing, and the
// key LlamaConfig::from_hf_json refuses.
LlamaConfig hf_config(const std::string& dir);

// The float model of the checkpoint folder `dir`. Throws std::runtime_error
// naming the file (and key or tensor) for a missing config.json or shard, an
// unsupported architecture, a corrupt shard, or tensors that do not fit.
LlamaForCausalLM load_hf_model(const std::string& dir);

} // namespace qat::models
