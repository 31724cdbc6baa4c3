// The integer grids, INT2..INT8, signed or unsigned, symmetric or affine:
// torch.ao's range rule (with the runtimes' symmetric divisor by default),
// the affine fake-quant op, and codes stored as int8 / uint8 or, at 4 bits
// and fewer, two a byte (low nibble first, offset to unsigned).
#include <torch/torch.h>

#include <limits>
#include <stdexcept>

#include "ops/ops.h"
#include "qat/format.h"

namespace qat {
namespace {

bool packed(const QuantSpec& spec) {
  return spec.bits() <= 4;
}

class IntegerFormat final : public Format {
 public:
  QParams qparams_from_range(
      const torch::Tensor& min_val,
      const torch::Tensor& max_val,
      const QuantSpec& spec) const override {
    const float eps = std::numeric_limits<float>::epsilon();
    const auto min_neg = torch::clamp_max(min_val, 0.0f);
    const auto max_pos = torch::clamp_min(max_val, 0.0f);
    const double qmin = static_cast<double>(spec.quant_min());
    const double qmax = static_cast<double>(spec.quant_max());
    if (spec.symmetric()) {
      auto scale = torch::clamp_min(
          range_amax(min_val, max_val) / spec.symmetric_divisor(), eps);
      const int64_t zp =
          spec.is_signed() ? 0 : (spec.quant_min() + spec.quant_max() + 1) / 2;
      return {
          scale.to(torch::kFloat), torch::full_like(scale, zp, torch::kInt)};
    }
    auto scale = torch::clamp_min((max_pos - min_neg) / (qmax - qmin), eps)
                     .to(torch::kFloat);
    auto zp = torch::clamp(qmin - torch::round(min_neg / scale), qmin, qmax)
                  .to(torch::kInt);
    return {scale, zp};
  }

  torch::Tensor fake_quantize(
      const torch::Tensor& x,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      const QuantSpec& spec) const override {
    return ops::fake_quant_affine(
        x,
        scale,
        zero_point,
        axis,
        group_size,
        spec.quant_min(),
        spec.quant_max());
  }

  QuantizedWeight quantize(
      const torch::Tensor& w,
      const QuantSpec& spec,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point) const override {
    QuantizedWeight q{
        spec,
        w.sizes().vec(),
        {},
        scale.detach().to(torch::kFloat).clone(),
        zero_point.detach().to(torch::kInt).clone(),
        {}};
    const torch::Tensor s = broadcast_params(q.scale, spec, w.sizes());
    const torch::Tensor zp =
        broadcast_params(q.zero_point, spec, w.sizes()).to(torch::kFloat);
    // The affine kernel's float arithmetic: zp + round_half_even(x * (1/s)).
    const torch::Tensor codes = torch::clamp(
                                    torch::round(w * torch::reciprocal(s)) + zp,
                                    spec.quant_min(),
                                    spec.quant_max())
                                    .to(torch::kInt);
    if (!packed(spec)) {
      q.data = codes.to(spec.is_signed() ? torch::kChar : torch::kByte);
      return q;
    }
    if (w.size(-1) % 2 != 0) {
      throw std::invalid_argument(
          "convert: packing " + std::to_string(spec.bits()) +
          "-bit codes two per byte needs an even last dimension, got " +
          std::to_string(w.size(-1)));
    }
    const torch::Tensor u = (codes - spec.quant_min()).to(torch::kByte);
    const auto pairs = u.reshape({-1, 2});
    q.data = (pairs.select(1, 0) + pairs.select(1, 1) * 16).reshape([&] {
      auto shape = w.sizes().vec();
      shape.back() /= 2;
      return shape;
    }());
    return q;
  }

  torch::Tensor codes(const QuantizedWeight& q) const override {
    if (!packed(q.spec))
      return q.data.to(torch::kInt);
    const torch::Tensor low = q.data.bitwise_and(0x0F),
                        high = q.data.bitwise_right_shift(4);
    return torch::stack({low, high}, -1).reshape(q.shape).to(torch::kInt) +
        static_cast<int>(q.spec.quant_min());
  }

  torch::Tensor dequantize(const QuantizedWeight& q) const override {
    const torch::Tensor s = broadcast_params(q.scale, q.spec, q.shape);
    const torch::Tensor zp =
        broadcast_params(q.zero_point, q.spec, q.shape).to(torch::kFloat);
    return (codes(q).to(torch::kFloat) - zp) * s;
  }

  int64_t storage_bytes(const QuantizedWeight& q) const override {
    return q.data.numel() * q.data.element_size() + q.scale.numel() * 4 +
        (q.zero_point.defined() ? q.zero_point.numel() * 4 : 0);
  }
};

} // namespace

const Format& integer_format() {
  static const IntegerFormat format;
  return format;
}

} // namespace qat
