// AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM
// Compression and Acceleration", 2024): weight-only quantization loses least
// where the inputs are large, so each input channel j of the Linear layers
// that read one tensor is scaled up by s_j before rounding (its weight column
// rounds with a smaller relative error) and the producer of that tensor is
// scaled down by it (qat/calibration/scale_folding.h): the float model's
// function is unchanged and the exported model is the same graph.
//
// Per scale-folding point, the search tries
//   s = mean|x|^a / mean_normalized|W|^(1-a)   (duo scaling; mean|x|^a without)
// for a = 0, 1/grid, ..., (grid-1)/grid, normalized to sqrt(max s * min s) = 1,
// and s = 1 (round to nearest), and keeps the one with the least output error
// of the readers on the calibration inputs,
//   sum_r tr(E_r H E_r^T),  E_r = W_r - Q(W_r diag(s)) diag(1/s),
// with H = sum x x^T of the point's float inputs: the squared output error of
// AutoAWQ's objective, computed from H instead of by running the layers
// again for every candidate. Then the clipping search: each quantization
// group of each reader's scaled weight is clamped to r times its range for r
// = 1, 1 - max_shrink/clip_grid, ..., 1 - max_shrink, keeping per group the r
// with the least output error through its block of H (AutoAWQ's
// auto_clip, also from H).
//
// Q is the weight format's own rounding of a tensor from its range (each
// format's dynamic rule: what its min-max observer calibrates on a weight),
// so AWQ serves every weight format the project has, GGUF blocks and
// microscaling included. Activation quantizers are calibrated afterwards, on
// the folded model.
//
//   auto& foldable = dynamic_cast<qat::ScaleFoldable&>(*model);
//   qat::calibrate_awq(*model, foldable.scale_fold_points(),
//                      [&] { for (auto& b : batches) model->forward(b); });
#pragma once

#include <torch/arg.h>

#include <functional>
#include <string>
#include <vector>

#include "qat/calibration/scale_folding.h"

namespace qat {

struct AwqOptions {
  TORCH_ARG(int64_t, grid) = 20;
  // Divide by the weight's normalized magnitude too (AutoAWQ's and
  // llm-compressor's default), not only multiply by the inputs'.
  TORCH_ARG(bool, duo_scaling) = true;
  TORCH_ARG(bool, clip) = true;
  TORCH_ARG(double, max_shrink) = 0.5;
  TORCH_ARG(int64_t, clip_grid) = 20;
};

// What calibrate_awq did at one point.
struct AwqPointReport {
  std::string name;
  int64_t readers = 0; // quantized readers (the objective's terms)
  int64_t tokens = 0;
  double alpha = -1; // the exponent chosen; -1: s = 1 was best
  // The readers' output error on the calibration inputs after scaling and
  // clipping, relative to round to nearest's.
  double error_vs_rtn = 0;
};

struct AwqHooks {
  std::function<void(const AwqPointReport&)> progress;
  FoldInputHooks ranks;
};

// Collects the points' inputs from `run_batches` (the float model's), finds
// and folds each point's scales, clips, then calibrates the model as
// calibrate() does (observers see the folded model). Points whose readers have
// no weight quantizer are left as they are. Throws std::invalid_argument
// before anything changes when no point has a quantized reader, or for bad
// options.
std::vector<AwqPointReport> calibrate_awq(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    const AwqOptions& options = {},
    const AwqHooks& hooks = {});

} // namespace qat
