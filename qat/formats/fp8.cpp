// FP8, OCP e4m3fn and e5m2: scale = amax / the format's largest value, the
// FP8 fake-quant op (x / scale, saturated, rounded to nearest even by c10's
// cast), and the values stored as float8 with float32 scales.
#include <torch/torch.h>

#include <limits>

#include "ops/ops.h"
#include "qat/format.h"

namespace qat {
namespace {

torch::ScalarType fp8_dtype(const QuantSpec& spec) {
  return spec.format() == NumberFormat::fp8_e5m2 ? torch::kFloat8_e5m2
                                                 : torch::kFloat8_e4m3fn;
}

class Fp8Format final : public Format {
 public:
  QParams qparams_from_range(
      const torch::Tensor& min_val,
      const torch::Tensor& max_val,
      const QuantSpec& spec) const override {
    const float eps = std::numeric_limits<float>::epsilon();
    const auto scale = range_amax(min_val, max_val) / spec.format_max();
    return {
        torch::clamp_min(scale, eps).to(torch::kFloat),
        torch::zeros_like(scale, torch::kInt)};
  }

  torch::Tensor fake_quantize(
      const torch::Tensor& x,
      const torch::Tensor& scale,
      const torch::Tensor& /*zero_point*/,
      std::optional<int64_t> axis,
      int64_t group_size,
      const QuantSpec& spec) const override {
    return ops::fake_quant_fp8(x, scale, axis, group_size, spec.fp8_name());
  }

  QuantizedWeight quantize(
      const torch::Tensor& w,
      const QuantSpec& spec,
      const torch::Tensor& scale,
      const torch::Tensor& /*zero_point*/) const override {
    QuantizedWeight q{
        spec,
        w.sizes().vec(),
        {},
        scale.detach().to(torch::kFloat).clone(),
        {},
        {}};
    // The FP8 kernel's rule: x / scale, saturated, rounded to nearest even.
    const double max = spec.format_max();
    q.data = (w / broadcast_params(q.scale, spec, w.sizes()))
                 .clamp(-max, max)
                 .to(fp8_dtype(spec));
    return q;
  }

  torch::Tensor codes(const QuantizedWeight& q) const override {
    return q.data.to(torch::kFloat);
  }

  torch::Tensor dequantize(const QuantizedWeight& q) const override {
    return codes(q) * broadcast_params(q.scale, q.spec, q.shape);
  }

  int64_t storage_bytes(const QuantizedWeight& q) const override {
    return q.data.numel() * q.data.element_size() + q.scale.numel() * 4;
  }
};

} // namespace

const Format& fp8_format() {
  static const Fp8Format format;
  return format;
}

} // namespace qat
