// Observers: watch tensors during calibration and turn what they saw into
// scales and zero points for a QuantSpec. Their state lives in buffers, so it
// is saved with the model.
//
//   min_max         running min / max over every batch
//   moving_average  exponential moving average of each batch's min / max
//                   (constant c)
//   percentile      running mean of each batch's p-th and (100-p)-th
//                   percentiles (outliers clipped)
//   mse             running mean of each batch's range that minimises the
//                   fake-quant squared error, searched over a grid of clipping
//                   ratios of the min / max range
//
// The range -> qparams rule is torch.ao's (MinMaxObserver._calculate_qparams),
// but for the divisor of symmetric scales, which QuantSpec::symmetric_scale
// picks (the runtimes' qmax by default, torch.ao's half range on request):
//   symmetric  scale = max(|min|, |max|) / QuantSpec::symmetric_divisor()
//              (127 or torch.ao's 127.5 at 8 bits),
//              zero point 0 (signed) or (qmin + qmax + 1) / 2 (unsigned)
//   affine     scale = (max(max, 0) - min(min, 0)) / (qmax - qmin),
//              zero point = clamp(qmin - round(min(min, 0) / scale))
//   FP8        scale = max(|min|, |max|) / format max
// with every scale at least float32's epsilon.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <functional>

#include "qat/buffer_value.h"
#include "qat/spec.h"

namespace qat {

enum class ObserverKind { min_max, moving_average, percentile, mse };

struct ObserverOptions {
  TORCH_ARG(ObserverKind, kind) = ObserverKind::min_max;
  TORCH_ARG(double, averaging_constant) = 0.01; // moving_average
  TORCH_ARG(double, percentile) = 99.99;        // percentile, in (50, 100]
  TORCH_ARG(int64_t, mse_steps) =
      40; // mse: clipping ratios 1, 1 - 1/steps, ... 0.2
};

struct QParams {
  torch::Tensor scale; // float32, in the shape the qat ops expect for the spec
  torch::Tensor zero_point; // int32, same shape (zeros for symmetric and FP8)
};

// The tensor's elements as [number of parameters, elements per parameter] for
// the spec's granularity, rows in the order of the op's scale layout.
torch::Tensor rows_for_params(const torch::Tensor& x, const QuantSpec& spec);
// Per-row values back into the scale shape the qat ops expect for x.
torch::Tensor params_shape(
    const torch::Tensor& per_row,
    const torch::Tensor& x,
    const QuantSpec& spec);
// torch.ao's range -> (scale, zero point) rule above, per row.
QParams qparams_from_range(
    const torch::Tensor& min_val,
    const torch::Tensor& max_val,
    const QuantSpec& spec);
// Scale and zero point computed from x itself (min / max per quantization
// group, the rule above), in the ops' layout: dynamic specs use them.
QParams dynamic_qparams(const torch::Tensor& x, const QuantSpec& spec);
// Fake-quantizes the rows [P, n] with one (scale, zero point) per row; used by
// the MSE search.
torch::Tensor fake_quant_rows(
    const torch::Tensor& rows,
    const QParams& qparams,
    const QuantSpec& spec);

// Data-parallel training: how observers on several ranks agree. Called with
// each batch's per-row range before it is merged into the running state, it
// must leave the same range on every rank: the minimum of `min` and maximum
// of `max` over the ranks (mean = false: min_max and moving_average, whose
// batch ranges compose exactly, so N ranks with a shard each observe what one
// process with the whole batch would), or the mean of both over the ranks
// (mean = true: percentile and mse, whose batch statistics do not compose).
using RangeReduction =
    std::function<void(torch::Tensor& min, torch::Tensor& max, bool mean)>;

class ObserverImpl : public torch::nn::Cloneable<ObserverImpl> {
 public:
  ObserverImpl(QuantSpec spec, ObserverOptions options = {});

  void reset() override;
  // Records x (no gradient is taken).
  void observe(const torch::Tensor& x);
  bool has_observed() const {
    return batches_value_.get(batches_) > 0;
  }
  // Scale and zero point in the op's shape for tensors shaped like the last
  // observed one.
  QParams qparams() const;
  // Unset (the default): the local batch's range.
  void set_range_reduction(RangeReduction reduction) {
    range_reduction_ = std::move(reduction);
  }

  const QuantSpec& spec() const {
    return spec_;
  }
  const ObserverOptions& options() const {
    return options_;
  }
  const torch::Tensor& min_val() const {
    return min_val_;
  }
  const torch::Tensor& max_val() const {
    return max_val_;
  }

 private:
  std::pair<torch::Tensor, torch::Tensor> batch_range(
      const torch::Tensor& rows) const;

  QuantSpec spec_;
  ObserverOptions options_;
  RangeReduction range_reduction_;
  torch::Tensor min_val_, max_val_; // per parameter row
  torch::Tensor batches_;           // int64 [1]: batches seen
  BufferValue<int64_t> batches_value_;
  torch::Tensor
      observed_shape_; // int64 [dim]: shape of the last observed tensor
};
TORCH_MODULE(Observer);

} // namespace qat
