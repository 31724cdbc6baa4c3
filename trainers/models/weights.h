// A model's float weights as a Hugging Face-style safetensors file: every
// parameter and buffer by its module path ("model.layers.0.mlp.up_proj.weight"),
// without the state of qat's quantizers (their scales live in QAT checkpoints
// and exports, not in the float weights).
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace qat::models {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The float weights, in module order.
NamedTensors float_weights(const torch::nn::Module& model);

// Writes float_weights(model) atomically (safetensors::write).
void save_weights(
    const torch::nn::Module& model,
    const std::string& path,
    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Loads every float weight of `model` from `path` by name, converting the
// dtype (bf16 / fp16 checkpoints load into float32 models). File tensors for
// which `ignore(name)` is true are skipped. Everything is checked before
// anything is copied: a missing or unexpected tensor or a shape mismatch
// throws std::runtime_error naming the file and the tensors, and leaves the
// model as it was.
void load_weights(
    torch::nn::Module& model,
    const std::string& path,
    const std::function<bool(const std::string&)>& ignore = {});

} // namespace qat::models
