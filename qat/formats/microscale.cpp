// The microscaling block formats NVFP4, MXFP4 and MXFP8 (compressed-tensors'
// rules; the format table and row kernels are kernels/ref/microscale_ref.h):
// the block scales always come from the tensor itself, inside the op; what is
// calibrated is NVFP4's float32 global scale. Stored as compressed-tensors'
// compressors store them: e2m1 codes two a byte or e4m3fn values, a scale
// byte per block, NVFP4's global scale.
#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

#include "kernels/microscale_math.h"
#include "kernels/ref/microscale_ref.h"
#include "ops/ops.h"
#include "qat/format.h"

namespace qat {
namespace {

// Rows of the last dimension, as the kernels and the checkpoint lay them out.
std::pair<int64_t, int64_t> microscale_rows(
    const kernels::MicroscaleFormatInfo& info,
    at::IntArrayRef shape) {
  const int64_t cols = shape.empty() ? 1 : shape.back();
  if (cols % info.block_size != 0) {
    throw std::invalid_argument(
        std::string("convert: ") + info.name + " blocks need a last " +
        "dimension that is a multiple of " + std::to_string(info.block_size) +
        ", got " + std::to_string(cols));
  }
  return {cols == 0 ? 0 : c10::multiply_integers(shape) / cols, cols};
}

class MicroscaleFormat final : public Format {
 public:
  QParams qparams_from_range(
      const torch::Tensor& min_val,
      const torch::Tensor& max_val,
      const QuantSpec& spec) const override {
    // NVFP4's global scale (generate_gparam, kernels/microscale_math.h); the
    // MX formats have none, and their block scales are the kernels' own.
    const torch::Tensor amax =
        range_amax(min_val, max_val).to(torch::kFloat).cpu().contiguous();
    torch::Tensor scale = torch::ones_like(amax);
    if (spec.microscale_info()->global_scale) {
      const float* a = amax.const_data_ptr<float>();
      float* g = scale.mutable_data_ptr<float>();
      for (int64_t i = 0; i < amax.numel(); ++i)
        g[i] = kernels::nvfp4_global_scale(a[i]);
    }
    return {
        scale.to(min_val.device()), torch::zeros_like(min_val, torch::kInt)};
  }

  // The block scales are the op's, from each input; `scale` is NVFP4's
  // calibrated global scale.
  torch::Tensor fake_quantize(
      const torch::Tensor& x,
      const torch::Tensor& scale,
      const torch::Tensor& /*zero_point*/,
      std::optional<int64_t> /*axis*/,
      int64_t /*group_size*/,
      const QuantSpec& spec) const override {
    return ops::fake_quant_microscale(
        x,
        spec.microscale_name(),
        spec.microscale_info()->global_scale ? std::optional(scale)
                                             : std::nullopt);
  }

  // Every scale from x, NVFP4's global scale too.
  torch::Tensor fake_quantize_dynamic(
      const torch::Tensor& x,
      const QuantSpec& spec) const override {
    return ops::fake_quant_microscale(x, spec.microscale_name(), std::nullopt);
  }

  // The weight's block scales, under NVFP4's global scale `scale`.
  QuantizedWeight quantize(
      const torch::Tensor& weight,
      const QuantSpec& spec,
      const torch::Tensor& global_scale,
      const torch::Tensor& /*zero_point*/) const override {
    const torch::Tensor w = weight.cpu();
    const auto& info = *spec.microscale_info();
    const auto [rows, cols] = microscale_rows(info, w.sizes());
    const float g = info.global_scale ? global_scale.item<float>() : 1.0f;
    if (info.global_scale && !(std::isfinite(g) && g > 0.0f)) {
      throw std::invalid_argument(
          "convert: the NVFP4 global scale must be finite and positive, got " +
          std::to_string(g));
    }
    const int64_t blocks = rows * cols / info.block_size;
    std::vector<uint8_t> scale_codes(blocks);
    kernels::microscale_scales_ref(
        w.const_data_ptr<float>(),
        rows,
        cols,
        info.format,
        g,
        scale_codes.data());
    auto values_shape = w.sizes().vec(), scale_shape = w.sizes().vec();
    if (!values_shape.empty()) {
      values_shape.back() = info.element_bits == 4 ? cols / 2 : cols;
      scale_shape.back() = cols / info.block_size;
    }
    QuantizedWeight q{
        spec,
        w.sizes().vec(),
        torch::empty(values_shape, torch::kByte),
        torch::empty(scale_shape, torch::kByte),
        {},
        {}};
    kernels::pack_microscale_ref(
        w.const_data_ptr<float>(),
        rows,
        cols,
        info.format,
        scale_codes.data(),
        g,
        q.data.mutable_data_ptr<uint8_t>(),
        q.scale.mutable_data_ptr<uint8_t>());
    if (info.element_bits == 8)
      q.data = q.data.view(torch::kFloat8_e4m3fn);
    if (info.global_scale) {
      q.scale = q.scale.view(torch::kFloat8_e4m3fn);
      q.global_scale = torch::full({1}, g);
    }
    q.data = q.data.to(weight.device());
    q.scale = q.scale.to(weight.device());
    return q;
  }

  torch::Tensor codes(const QuantizedWeight& q) const override {
    const auto& info = *q.spec.microscale_info();
    const torch::Tensor bytes = q.data.cpu().contiguous().view(torch::kByte);
    torch::Tensor nibbles = bytes;
    if (info.element_bits == 4) {
      nibbles = torch::stack(
                    {bytes.bitwise_and(0x0F), bytes.bitwise_right_shift(4)}, -1)
                    .reshape(q.shape)
                    .contiguous();
    }
    torch::Tensor out = torch::empty(q.shape, torch::kFloat);
    const uint8_t* in = nibbles.const_data_ptr<uint8_t>();
    float* values = out.mutable_data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i)
      values[i] = kernels::microscale_element_value(info.format, in[i]);
    return out.to(q.data.device());
  }

  torch::Tensor dequantize(const QuantizedWeight& q) const override {
    const auto& info = *q.spec.microscale_info();
    const auto [rows, cols] = microscale_rows(info, q.shape);
    const torch::Tensor values = q.data.cpu().contiguous().view(torch::kByte);
    const torch::Tensor scales = q.scale.cpu().contiguous().view(torch::kByte);
    torch::Tensor out = torch::empty(q.shape, torch::kFloat);
    kernels::unpack_microscale_ref(
        values.const_data_ptr<uint8_t>(),
        scales.const_data_ptr<uint8_t>(),
        rows,
        cols,
        info.format,
        info.global_scale ? q.global_scale.item<float>() : 1.0f,
        out.mutable_data_ptr<float>());
    return out.to(q.data.device());
  }

  int64_t storage_bytes(const QuantizedWeight& q) const override {
    return q.data.numel() * q.data.element_size() + q.scale.numel() +
        (q.global_scale.defined() ? 4 : 0);
  }
};

} // namespace

const Format& microscale_format() {
  static const MicroscaleFormat format;
  return format;
}

} // namespace qat
