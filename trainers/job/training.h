// The training loop the float, float_tuned and qat.<scheme> stages share:
// optimizer and schedule, gradient accumulation, the QAT schedule, optional
// distillation, checkpoints and resume, data-parallel gradients, NaN stops.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <string>

#include "trainers/job/context.h"
#include "trainers/recipe.h"

namespace qat::train {

// Thrown when JobOptions::halt_stage / halt_step is reached, after its
// checkpoint is written.
struct Halted {
  int64_t step;
};

// One training stage's settings (trainer.float or trainer.qat).
struct LoopConfig {
  int64_t steps = 0, accumulate = 1, warmup = 0;
  std::string optimizer = "sgd";
  double lr = 0.1, momentum = 0.9, weight_decay = 0, min_lr_ratio = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, clip = 0, quantizer_lr = 0;
  // QAT schedule: fake-quant from step fake_quant_after on, observers frozen
  // at freeze_observers_at, BN statistics at freeze_bn_at (-1: never).
  int64_t fake_quant_after = 0, freeze_observers_at = -1, freeze_bn_at = -1;
  // Distillation from the float model: ce * CE + kl * T^2 * KL(T) + mse *
  // MSE(features).
  double ce = 1, kl = 0, temperature = 1, mse = 0;
  int64_t eval_every = 0;
  bool autocast_bf16 = false;

  // The settings under `prefix`; a bad value fails naming its key.
  static LoopConfig read(const recipe::Recipe& r, const std::string& prefix);
  // Linear warm-up, then cosine decay to min_lr_ratio.
  double lr_factor(int64_t step) const;
  bool distills() const {
    return kl > 0 || mse > 0;
  }
};

// Trains `model` as `stage` (its checkpoints in <run.dir>/checkpoints/<stage>)
// until config.steps, resuming from the newest checkpoint with
// JobOptions::resume. `teacher` (may be null) is what distillation matches;
// `quantized` models follow the QAT schedule and end with fake-quant on and
// observers frozen.
void train(
    JobContext& job,
    const std::string& stage,
    torch::nn::Module& model,
    const LoopConfig& config,
    torch::nn::Module* teacher,
    bool quantized);

} // namespace qat::train
