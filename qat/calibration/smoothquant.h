// SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient
// Post-Training Quantization for Large Language Models", 2023): for W8A8, a
// few input channels of a Linear carry outliers far above the rest, and
// per-token activation scales spend their range on them. Dividing channel j of
// the input by
//
//   s_j = max|x_j|^alpha / max_r max_i |W_r[i, j]|^(1 - alpha)
//
// (the readers' largest weight in that column) and multiplying the weights'
// column j by it migrates the difficulty from the activations into the
// weights; alpha = 0.5 balances them. The scales fold into the producer of x
// (qat/calibration/scale_folding.h), so the exported model is the same graph.
// Observers are calibrated afterwards on the folded model.
//
//   qat::calibrate_smoothquant(*model, foldable.scale_fold_points(), run_batches,
//                              qat::SmoothQuantOptions().alpha(0.5));
#pragma once

#include <torch/arg.h>

#include <functional>
#include <string>
#include <vector>

#include "qat/calibration/scale_folding.h"

namespace qat {

struct SmoothQuantOptions {
  TORCH_ARG(double, alpha) = 0.5;
};

struct SmoothQuantPointReport {
  std::string name;
  int64_t tokens = 0;
  // max_j max|x_j| / median_j max|x_j| before and after folding: how much
  // the largest channel outgrew the typical one.
  double outlier_ratio_before = 0, outlier_ratio_after = 0;
};

struct SmoothQuantHooks {
  std::function<void(const SmoothQuantPointReport&)> progress;
  FoldInputHooks ranks;
};

// The migration scales for one point: [C] from the inputs' max |x_j| and the
// readers' weights. Channels that never fired or whose weights are all zero
// get 1.
torch::Tensor smoothquant_scales(
    const torch::Tensor& input_abs_max,
    const std::vector<torch::Tensor>& reader_weights,
    double alpha);

// Folds each point whose readers quantize their inputs, then calibrates as
// calibrate() does. Throws std::invalid_argument before anything changes for
// alpha outside [0, 1] or when no reader of any point has an input quantizer
// (weight-only schemes: SmoothQuant has nothing to smooth; AWQ is their
// method).
std::vector<SmoothQuantPointReport> calibrate_smoothquant(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    const SmoothQuantOptions& options = {},
    const SmoothQuantHooks& hooks = {});

} // namespace qat
