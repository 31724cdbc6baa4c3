// Scale folding: the equivalent transform under AWQ and SmoothQuant. Where an
// op produces a tensor x that only Linear layers read, a scale s per channel
// moves between them without changing the float model's function:
//
//   y = W x = (W diag(s)) (diag(1/s) x)
//
// so the producer's output channel j is divided by s_j (a norm's weight, or
// the rows of a Linear producer and its bias) and each reader's input column
// j is multiplied by it. The served model is the same graph with other
// weights: no extra multiply anywhere. The architecture knows where such
// points are (which norm feeds which projections), so a model that offers
// them implements ScaleFoldable (qat::models::LlamaForCausalLM does).
//
//   auto points = dynamic_cast<qat::ScaleFoldable&>(*model).scale_fold_points();
//   auto stats = qat::collect_fold_inputs(points, run_batches, /*hessians=*/true);
//   qat::fold_scales(points[0], s);  // outputs unchanged up to rounding
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace qat {

class QuantLinearImpl;

struct ScaleFoldPoint {
  // The producer's module name ("model.layers.3.input_layernorm").
  std::string name;
  // A norm's weight [C] (divided elementwise), or a Linear producer's weight
  // [C, in] (its rows divided) and its bias [C] when it has one.
  torch::Tensor producer_weight, producer_bias;
  // Every Linear that reads the produced tensor (all of them: a reader left
  // out would see its input scaled), with its module name.
  std::vector<std::pair<std::string, QuantLinearImpl*>> readers;
};

// A model whose architecture names its scale-folding points.
class ScaleFoldable {
 public:
  virtual ~ScaleFoldable() = default;
  virtual std::vector<ScaleFoldPoint> scale_fold_points() = 0;
};

// Divides the producer's channels by `scale` [C] (positive) and multiplies
// every reader's input columns by it. Throws std::invalid_argument for a
// scale of the wrong length or one that is not positive and finite.
void fold_scales(const ScaleFoldPoint& point, const torch::Tensor& scale);

// What the readers of one point saw over the calibration batches, float64
// (before any folding).
struct FoldPointInputs {
  torch::Tensor abs_sum; // [C] sum of |x_j| over the tokens
  torch::Tensor abs_max; // [C] max of |x_j|
  torch::Tensor hessian; // [C, C] sum of x x^T (when asked for)
  int64_t tokens = 0;
  torch::Tensor abs_mean() const {
    return abs_sum / static_cast<double>(std::max<int64_t>(tokens, 1));
  }
};

struct FoldInputHooks {
  // Data parallelism: sums (or takes the max of) a tensor over the ranks in
  // place, so that every rank folds the same scales.
  std::function<void(torch::Tensor&)> sum_over_ranks, max_over_ranks;
};

// Runs `run_batches` (without gradients, observers and fake-quant off: the
// float model's activations) with a tap on the first reader of each point.
// The observers record nothing; both stay off afterwards (calibrate() turns
// them on).
std::vector<FoldPointInputs> collect_fold_inputs(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    bool hessians,
    const FoldInputHooks& hooks = {});

} // namespace qat
