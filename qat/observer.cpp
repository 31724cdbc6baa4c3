#include "qat/observer.h"

#include <torch/torch.h>

#include <limits>
#include <stdexcept>

#include "qat/format.h"

namespace qat {
namespace {

int64_t wrap_axis(int64_t axis, int64_t dim) {
  const int64_t wrapped = axis < 0 ? axis + dim : axis;
  if (wrapped < 0 || wrapped >= dim) {
    throw std::invalid_argument(
        "axis " + std::to_string(axis) + " is out of range for a " +
        std::to_string(dim) + "-dimensional tensor");
  }
  return wrapped;
}

} // namespace

torch::Tensor rows_for_params(const torch::Tensor& x, const QuantSpec& spec) {
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return x.reshape({1, -1});
    case Granularity::per_channel: {
      const int64_t axis = wrap_axis(spec.axis(), x.dim());
      return x.movedim(axis, 0).reshape({x.size(axis), -1});
    }
    case Granularity::per_group: {
      const int64_t axis = wrap_axis(spec.axis(), x.dim());
      if (x.size(axis) % spec.group_size() != 0) {
        throw std::invalid_argument(
            spec.to_string() + ": group_size " +
            std::to_string(spec.group_size()) + " does not divide size " +
            std::to_string(x.size(axis)) + " of axis " + std::to_string(axis));
      }
      return x.movedim(axis, -1).reshape({-1, spec.group_size()});
    }
    case Granularity::per_token:
      return x.reshape({-1, x.size(-1)});
  }
  throw std::logic_error("unknown granularity");
}

torch::Tensor params_shape(
    const torch::Tensor& per_row,
    const torch::Tensor& x,
    const QuantSpec& spec) {
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return per_row.reshape({1});
    case Granularity::per_channel:
      return per_row.reshape({-1});
    case Granularity::per_group: {
      const int64_t axis = wrap_axis(spec.axis(), x.dim());
      std::vector<int64_t> moved = x.movedim(axis, -1).sizes().vec();
      moved.back() /= spec.group_size();
      return per_row.reshape(moved).movedim(-1, axis).contiguous();
    }
    case Granularity::per_token: {
      std::vector<int64_t> shape = x.sizes().vec();
      shape.back() = 1;
      return per_row.reshape(shape);
    }
  }
  throw std::logic_error("unknown granularity");
}

QParams qparams_from_range(
    const torch::Tensor& min_val,
    const torch::Tensor& max_val,
    const QuantSpec& spec) {
  return format_of(spec).qparams_from_range(min_val, max_val, spec);
}

QParams dynamic_qparams(const torch::Tensor& x, const QuantSpec& spec) {
  torch::NoGradGuard no_grad;
  const auto [lo, hi] =
      torch::aminmax(rows_for_params(x.detach().to(torch::kFloat), spec), 1);
  const QParams q = qparams_from_range(lo, hi, spec);
  return {params_shape(q.scale, x, spec), params_shape(q.zero_point, x, spec)};
}

torch::Tensor fake_quant_rows(
    const torch::Tensor& rows,
    const QParams& qparams,
    const QuantSpec& spec) {
  // Per-row parameters along axis 0 (one global scale for NVFP4: per_tensor
  // rows are one row).
  return format_of(spec).fake_quantize(
      rows,
      qparams.scale.reshape({-1}),
      qparams.zero_point.reshape({-1}),
      0,
      0,
      spec);
}

ObserverImpl::ObserverImpl(QuantSpec spec, ObserverOptions options)
    : spec_(std::move(spec)), options_(options) {
  spec_.validate();
  if (options_.kind() == ObserverKind::percentile &&
      !(options_.percentile() > 50.0 && options_.percentile() <= 100.0)) {
    throw std::invalid_argument(
        "percentile observer: percentile must be in (50, 100], got " +
        std::to_string(options_.percentile()));
  }
  if (options_.kind() == ObserverKind::moving_average &&
      !(options_.averaging_constant() > 0.0 &&
        options_.averaging_constant() <= 1.0)) {
    throw std::invalid_argument(
        "moving_average observer: averaging_constant must be in (0, 1]");
  }
  if (options_.kind() == ObserverKind::mse && options_.mse_steps() < 1) {
    throw std::invalid_argument("mse observer: mse_steps must be >= 1");
  }
  reset();
}

void ObserverImpl::reset() {
  min_val_ = register_buffer("min_val", torch::empty({0}));
  max_val_ = register_buffer("max_val", torch::empty({0}));
  batches_ = register_buffer("batches", torch::zeros({1}, torch::kLong));
  observed_shape_ =
      register_buffer("observed_shape", torch::empty({0}, torch::kLong));
}

std::pair<torch::Tensor, torch::Tensor> ObserverImpl::batch_range(
    const torch::Tensor& rows) const {
  switch (options_.kind()) {
    case ObserverKind::min_max:
    case ObserverKind::moving_average: {
      auto [lo, hi] = torch::aminmax(rows, 1);
      return {lo, hi};
    }
    case ObserverKind::percentile: {
      const int64_t n = rows.size(1);
      const double fraction = options_.percentile() / 100.0;
      const int64_t k_hi =
          std::llround(fraction * static_cast<double>(n - 1)) + 1;
      const int64_t k_lo = n + 1 - k_hi;
      return {
          std::get<0>(torch::kthvalue(rows, k_lo, 1)),
          std::get<0>(torch::kthvalue(rows, k_hi, 1))};
    }
    case ObserverKind::mse: {
      auto [lo, hi] = torch::aminmax(rows, 1);
      auto best_err =
          torch::full({rows.size(0)}, std::numeric_limits<float>::infinity());
      auto best_ratio = torch::ones({rows.size(0)});
      const int64_t steps = options_.mse_steps();
      for (int64_t k = 0; k <= steps; ++k) {
        const double ratio =
            1.0 - 0.8 * static_cast<double>(k) / static_cast<double>(steps);
        const QParams q = qparams_from_range(lo * ratio, hi * ratio, spec_);
        const auto err =
            (fake_quant_rows(rows, q, spec_) - rows).square().sum(1);
        const auto better = err < best_err;
        best_err = torch::where(better, err, best_err);
        best_ratio = torch::where(
            better, torch::full_like(best_ratio, ratio), best_ratio);
      }
      return {lo * best_ratio, hi * best_ratio};
    }
  }
  throw std::logic_error("unknown observer kind");
}

void ObserverImpl::observe(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  if (x.numel() == 0)
    return;
  const auto rows = rows_for_params(x.detach().to(torch::kFloat), spec_);
  auto [lo, hi] = batch_range(rows);
  if (range_reduction_) {
    range_reduction_(
        lo,
        hi,
        options_.kind() == ObserverKind::percentile ||
            options_.kind() == ObserverKind::mse);
  }
  const int64_t seen = batches_value_.get(batches_);
  if (seen > 0 && min_val_.sizes() != lo.sizes()) {
    throw std::invalid_argument(
        "observer for " + spec_.to_string() + ": a tensor of shape " +
        c10::str(x.sizes()) + " has " + std::to_string(lo.numel()) +
        " quantization groups, earlier ones had " +
        std::to_string(min_val_.numel()));
  }
  if (seen == 0) {
    min_val_.set_data(lo);
    max_val_.set_data(hi);
  } else {
    switch (options_.kind()) {
      case ObserverKind::min_max:
        min_val_.set_data(torch::minimum(min_val_, lo));
        max_val_.set_data(torch::maximum(max_val_, hi));
        break;
      case ObserverKind::moving_average: {
        const double c = options_.averaging_constant();
        min_val_.set_data(min_val_ + c * (lo - min_val_));
        max_val_.set_data(max_val_ + c * (hi - max_val_));
        break;
      }
      case ObserverKind::percentile:
      case ObserverKind::mse: {
        // Running mean of the per-batch ranges.
        const double w = 1.0 / static_cast<double>(seen + 1);
        min_val_.set_data(min_val_ + w * (lo - min_val_));
        max_val_.set_data(max_val_ + w * (hi - max_val_));
        break;
      }
    }
  }
  batches_value_.set(batches_, seen + 1);
  observed_shape_.set_data(torch::tensor(x.sizes().vec(), torch::kLong));
}

QParams ObserverImpl::qparams() const {
  if (!has_observed()) {
    throw std::logic_error(
        "observer for " + spec_.to_string() +
        ": qparams() before any tensor was observed; calibrate first");
  }
  const auto shape_values = observed_shape_.contiguous();
  const std::vector<int64_t> shape(
      shape_values.data_ptr<int64_t>(),
      shape_values.data_ptr<int64_t>() + shape_values.numel());
  const auto like =
      torch::empty(shape, torch::TensorOptions().device(torch::kMeta));
  QParams q = qparams_from_range(min_val_, max_val_, spec_);
  return {
      params_shape(q.scale, like, spec_),
      params_shape(q.zero_point, like, spec_)};
}

} // namespace qat
