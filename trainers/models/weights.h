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

#include "qat/export/safetensors.h"

namespace qat::models {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The float weights, in module order.
NamedTensors float_weights(const torch::nn::Module& model);

// Writes float_weights(model) atomically (safetensors::write).
void save_weights(
    const torch::nn::Module& model,
    const std::string& path,
    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The safetensors files of one checkpoint, memory-mapped: one file, or a
// Hugging Face folder with model.safetensors or with
// model.safetensors.index.json and its shards. Every shard is opened (and
// its header checked) up front; errors name the index or shard at fault.
class WeightFiles {
 public:
  // A .safetensors file or a checkpoint folder.
  static WeightFiles open(const std::string& path);
  const std::vector<std::string>& names() const {
    return names_;
  }
  bool contains(const std::string& name) const {
    return where_.count(name) != 0;
  }
  const safetensors::TensorInfo& info(const std::string& name) const {
    return file_of(name).info(name);
  }
  const safetensors::File& file_of(const std::string& name) const;
  // The index or the single file (what errors name).
  const std::string& origin() const {
    return origin_;
  }

 private:
  std::vector<safetensors::File> files_;
  std::map<std::string, size_t> where_;
  std::vector<std::string> names_;
  std::string origin_;
};

// Loads every float weight of `model` from `files` by name, converting the
// dtype (bf16 / fp16 checkpoints load into float32 models) tensor by tensor
// from the mapped files, so that loading needs little beyond the model. File tensors for
// which `ignore(name)` is true are skipped. Everything is checked before
// anything is copied: a missing or unexpected tensor or a shape mismatch
// throws std::runtime_error naming the file and the tensors, and leaves the
// model as it was.
void load_weights(
    torch::nn::Module& model,
    const WeightFiles& files,
    const std::function<bool(const std::string&)>& ignore = {});
// The same for WeightFiles::open(path).
void load_weights(
    torch::nn::Module& model,
    const std::string& path,
    const std::function<bool(const std::string&)>& ignore = {});

} // namespace qat::models
