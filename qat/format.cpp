#include "qat/format.h"

#include <torch/torch.h>

#include <stdexcept>

namespace qat {

torch::Tensor Format::fake_quantize_dynamic(
    const torch::Tensor& x,
    const QuantSpec& spec) const {
  const QParams q = dynamic_qparams(x, spec);
  return fake_quantize(
      x,
      q.scale,
      q.zero_point,
      spec.op_axis(),
      spec.op_group_size(x.dim() > 0 ? x.size(-1) : 1),
      spec);
}

const Format& format_of(const QuantSpec& spec) {
  if (spec.gguf() != GgufRule::none)
    return gguf_format();
  if (spec.is_microscale())
    return microscale_format();
  if (spec.is_fp8())
    return fp8_format();
  return integer_format();
}

torch::Tensor integer_zero_point(
    const torch::Tensor& zero_point,
    const QuantSpec& spec) {
  if (!zero_point.is_floating_point())
    return zero_point.to(torch::kInt);
  return torch::round(zero_point)
      .clamp(spec.quant_min(), spec.quant_max())
      .to(torch::kInt);
}

torch::Tensor range_amax(
    const torch::Tensor& min_val,
    const torch::Tensor& max_val) {
  return torch::maximum(
      -torch::clamp_max(min_val, 0.0f), torch::clamp_min(max_val, 0.0f));
}

torch::Tensor broadcast_params(
    const torch::Tensor& params,
    const QuantSpec& spec,
    at::IntArrayRef shape) {
  const int64_t dim = static_cast<int64_t>(shape.size());
  const int64_t axis = spec.axis() < 0 ? spec.axis() + dim : spec.axis();
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return params.reshape({}).expand(shape);
    case Granularity::per_channel: {
      std::vector<int64_t> view(dim, 1);
      view[axis] = -1;
      return params.reshape(view).expand(shape);
    }
    case Granularity::per_group:
      return params.repeat_interleave(spec.group_size(), axis);
    case Granularity::per_token:
      return params.expand(shape);
  }
  throw std::logic_error("unknown granularity");
}

} // namespace qat
