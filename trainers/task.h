// What a job trains and measures, behind one interface so that the trainer's
// loop, checkpoints and reports serve every kind of model:
//
//   images   data.name fashion_mnist | digits, model.type mlp | resnet;
//            cross-entropy on labels, accuracy (%)
//   text     data.name kjv (the King James Bible), model.type llama (a
//            decoder over bytes) or gguf (a pretrained GGUF llama model at
//            model.path, with its own BPE tokenizer, e.g. SmolLM2-135M);
//            next-token cross-entropy, perplexity per byte or per token
//
// Batches are a function of (run.seed, index) alone, so a resumed run sees
// the same batches as an uninterrupted one, whatever its world size.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainers/recipe.h"

namespace qat::models {
class LanguageModelSource;
}

namespace qat::train {

using Metrics = std::map<std::string, double>;
using Model = std::shared_ptr<torch::nn::Module>;

struct Batch {
  torch::Tensor inputs, targets;
};

// A forward pass: logits, and the hidden state that the head reads (what
// distillation by MSE matches).
struct Output {
  torch::Tensor logits, features;
};

enum class Split { validation, test };

// This process's share of the data in a data-parallel job (the distributed
// sampler): data.batch_size is the global batch, and rank r of `world` takes
// its r-th contiguous slice, so N ranks together see exactly the batches one
// process would, in the same order every epoch; evaluation gives each rank
// every world-th batch and adds the totals over the ranks with `sum`.
struct Shard {
  int64_t rank = 0, world = 1;
  std::function<void(std::vector<double>&)> sum; // needed when world > 1
};

class Task {
 public:
  virtual ~Task() = default;
  // A fresh model (float until prepared) on the task's device.
  virtual Model build_model() const = 0;
  virtual Output forward(torch::nn::Module& model, const torch::Tensor& inputs)
      const = 0;
  // The mean cross-entropy of `output` against the batch's targets.
  virtual torch::Tensor loss(const Output& output, const Batch& batch)
      const = 0;
  // This rank's shard of the index-th training batch, and of the ones
  // calibration runs.
  virtual Batch train_batch(int64_t index) const = 0;
  virtual Batch calibration_batch(int64_t index) const = 0;
  // {metric(): ..., "loss": mean cross-entropy} over the whole split.
  virtual Metrics evaluate(torch::nn::Module& model, Split split) const = 0;
  // A greedy continuation of `prompt` (text tasks; "" for others).
  virtual std::string sample(
      torch::nn::Module& model,
      const std::string& prompt,
      int64_t tokens) const {
    return "";
  }
  // Where a language model came from (its tokenizer travels with exports),
  // or nullptr for other tasks.
  virtual const models::LanguageModelSource* language_model() const {
    return nullptr;
  }
  // Whether build_model() gives trained weights.
  virtual bool pretrained() const {
    return false;
  }
  // Metrics beyond metric() and loss that evaluate(test) reports (columns of
  // the summary: "hellaswag acc", ...).
  virtual std::vector<std::string> extra_metrics() const {
    return {};
  }
  // "accuracy" (%, higher is better) or "perplexity" (lower is better).
  virtual const char* metric() const = 0;
  bool higher_is_better() const {
    return std::string(metric()) == "accuracy";
  }
};

// The task the recipe's data and model sections describe, its data loaded
// onto `device`. Throws (naming data.batch_size) unless the world size
// divides the batch.
std::unique_ptr<Task> make_task(
    const recipe::Recipe& recipe,
    torch::Device device,
    uint64_t seed,
    Shard shard = {});

} // namespace qat::train
