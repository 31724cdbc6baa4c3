// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", 2023): each Linear layer's weight is
// quantized one input column at a time, and the rounding error of each column
// is spread over the columns not yet quantized, weighted by the inverse of
// the layer's input Hessian H = 2/n sum x x^T, so that the layer's output on
// the calibration inputs moves as little as the format allows.
//
// The scales are the weight quantizer's own, calibrated from the float weight
// before any update (GPTQ's "static groups", which exporters need: one scale
// per group whatever the column order); GPTQ chooses the codes under them.
// Each column is rounded by the format's own fake-quant op, so the layer can
// keep the latent weight (each column as it was rounded): the weight
// quantizer maps it to GPTQ's quantized weight bit for bit, convert() stores
// exactly what GPTQ chose, and QAT starts from weights inside their rounding
// cells rather than on the grid points.
//
//   qat::calibrate_gptq(*model, [&] { for (auto& b : batches) model->forward(b); },
//                       qat::GptqOptions().damp(0.01));
#pragma once

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <vector>

#include "qat/observer.h"
#include "qat/spec.h"

namespace qat {

struct GptqOptions {
  // Added to H's diagonal: this fraction of its mean (GPTQ's percdamp).
  TORCH_ARG(double, damp) = 0.01;
  // Columns updated together before the rest of the weight (the lazy batch).
  TORCH_ARG(int64_t, block_size) = 128;
  // Quantize the columns in order of decreasing H diagonal ("act order").
  TORCH_ARG(bool, act_order) = false;
};

// The GPTQ update of one weight [out, in] under `spec` (an integer or FP8
// format, per_tensor, per_channel along the outputs or per_group along the
// inputs) with the scales and zero points `qparams` in the qat ops' layout,
// and H = `hessian` [in, in] (any positive multiple). Returns the quantized
// weight (float32, each value on the format's grid) and the latent one.
// Inputs that never fired
// (zero diagonal) get weight zero. Throws std::invalid_argument for a spec it
// cannot serve and std::runtime_error when H stays indefinite even after the
// damping is raised a thousandfold.
struct GptqResult {
  torch::Tensor weight; // on the grid
  // Each column as GPTQ rounded it (float32, updated by the errors of the
  // columns before it): the format's op maps it to `weight` exactly. Kept
  // as the latent weight for QAT, it lies where rounding put it inside its
  // cell, as a float weight does, where `weight` sits on the grid points,
  // half a step from every threshold.
  torch::Tensor latent;
  int64_t dead_inputs = 0; // columns whose inputs were all zero
  double damp = 0;         // the damping used (raised when H needed it)
};
GptqResult gptq_quantize(
    const torch::Tensor& weight,
    const torch::Tensor& hessian,
    const QuantSpec& spec,
    const QParams& qparams,
    const GptqOptions& options = {});

// Why GPTQ cannot quantize a weight with `spec`, or "" when it can.
std::string gptq_unsupported(const QuantSpec& spec);

// What calibrate_gptq did to one layer.
struct GptqLayerReport {
  std::string name;
  int64_t tokens = 0;      // calibration rows that reached it
  int64_t inputs = 0;      // its in_features
  int64_t dead_inputs = 0; // of those, never nonzero
  double damp = 0;
  // sum over the calibration inputs of |x W'^T - x W_rtn^T|^2 relative to
  // RTN's error: the output error GPTQ leaves, as a fraction of rounding's
  // (estimated with H: tr(E H E^T)).
  double error_vs_rtn = 0;
};

// calibrate() with GPTQ: runs `run_batches` (observers on, fake-quant off)
// while accumulating the input Hessian of every Linear layer with a weight
// quantizer, then replaces each such weight by GPTQ's latent weight under the
// weight quantizer's calibrated scales (which its quantizer maps to GPTQ's
// quantized weight, bit for bit), and leaves the model calibrated as
// calibrate() does. The Hessians come from the float model's activations
// (every layer sees unquantized inputs). Throws std::invalid_argument naming the layer when its weight format is not
// one GPTQ serves, before anything changes.
struct GptqHooks {
  // Called after each layer's update.
  std::function<void(const GptqLayerReport&)> progress;
  // Data parallelism: sums a tensor over the ranks in place (each layer's
  // Hessian sum and token count), so that every rank updates with the
  // Hessian of the whole calibration set.
  std::function<void(torch::Tensor&)> sum_over_ranks;
};
std::vector<GptqLayerReport> calibrate_gptq(
    torch::nn::Module& model,
    const std::function<void()>& run_batches,
    const GptqOptions& options = {},
    const GptqHooks& hooks = {});

} // namespace qat
