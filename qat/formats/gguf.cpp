// ggml's GGUF blocks: the 32-value Q8_0, Q4_0, Q5_0, Q5_1 and the K-quants
// Q4_K, Q5_K, Q6_K (kernels/ref/gguf_ref.h has one row per type). Every
// scale lives in the blocks, found by ggml's own rules; a K-quant's may be a
// representation FakeQuantizer searched and kept (or learned). Stored as
// ggml's block bytes, one row of blocks per row of the weight.
#include <torch/torch.h>

#include <stdexcept>

#include "kernels/ref/gguf_ref.h"
#include "ops/ops.h"
#include "qat/format.h"

namespace qat {
namespace {

kernels::GgufType gguf_type(const QuantSpec& spec) {
  return static_cast<kernels::GgufType>(static_cast<int>(spec.gguf()) - 1);
}

class GgufFormat final : public Format {
 public:
  // Nothing is calibrated: the blocks hold their scales.
  QParams qparams_from_range(
      const torch::Tensor& min_val,
      const torch::Tensor& /*max_val*/,
      const QuantSpec& /*spec*/) const override {
    return {
        torch::ones_like(min_val, torch::kFloat),
        torch::zeros_like(min_val, torch::kInt)};
  }

  torch::Tensor fake_quantize(
      const torch::Tensor& x,
      const torch::Tensor& /*scale*/,
      const torch::Tensor& /*zero_point*/,
      std::optional<int64_t> /*axis*/,
      int64_t /*group_size*/,
      const QuantSpec& spec) const override {
    return ops::fake_quant_gguf(x, spec.gguf_name());
  }

  torch::Tensor fake_quantize_dynamic(
      const torch::Tensor& x,
      const QuantSpec& spec) const override {
    return ops::fake_quant_gguf(x, spec.gguf_name());
  }

  // `representation`, if uint8 and not empty, is a K-quant's kept one and
  // the codes follow it; else each block is searched as ggml searches it.
  QuantizedWeight quantize(
      const torch::Tensor& weight,
      const QuantSpec& spec,
      const torch::Tensor& representation,
      const torch::Tensor& /*zero_point*/) const override {
    const torch::Tensor w = weight.cpu();
    const auto& info = kernels::gguf_type_info(gguf_type(spec));
    const int64_t n = w.numel(), row_len = w.size(-1);
    if (row_len % info.block_size != 0) {
      throw std::invalid_argument(
          std::string("convert: GGUF ") + info.name + " blocks need a last " +
          "dimension that is a multiple of " + std::to_string(info.block_size) +
          ", got " + std::to_string(row_len));
    }
    const int64_t blocks = n / info.block_size;
    auto shape = w.sizes().vec();
    shape.back() = row_len / info.block_size * info.block_bytes;
    QuantizedWeight q{
        spec, w.sizes().vec(), torch::empty(shape, torch::kByte), {}, {}, {}};
    if (representation.defined() &&
        representation.scalar_type() == torch::kByte &&
        representation.numel() > 0) {
      const torch::Tensor reps = representation.cpu().contiguous();
      if (reps.numel() != blocks * info.representation_bytes) {
        throw std::invalid_argument(
            std::string("convert: GGUF ") + info.name + " needs " +
            std::to_string(info.representation_bytes) +
            " representation bytes per block of 256, one block per 256 weights");
      }
      kernels::quantize_gguf_fixed_ref(
          w.const_data_ptr<float>(),
          n,
          info.type,
          reps.const_data_ptr<uint8_t>(),
          q.data.mutable_data_ptr<uint8_t>());
    } else {
      kernels::quantize_gguf_ref(
          w.const_data_ptr<float>(),
          n,
          info.type,
          q.data.mutable_data_ptr<uint8_t>());
    }
    // Each block's stored half d, as float for inspection.
    const auto block_bytes = q.data.view({blocks, -1});
    q.scale = block_bytes.narrow(1, info.scale_offset, 2)
                  .contiguous()
                  .view(torch::kShort)
                  .view(torch::kHalf)
                  .to(torch::kFloat)
                  .view([&] {
                    auto s = w.sizes().vec();
                    s.back() /= info.block_size;
                    return s;
                  }());
    q.data = q.data.to(weight.device());
    q.scale = q.scale.to(weight.device());
    return q;
  }

  torch::Tensor codes(const QuantizedWeight& q) const override {
    const torch::Tensor bytes = q.data.cpu().contiguous();
    torch::Tensor out = torch::empty(q.shape, torch::kInt);
    kernels::gguf_codes_ref(
        bytes.const_data_ptr<uint8_t>(),
        out.numel(),
        gguf_type(q.spec),
        out.mutable_data_ptr<int32_t>());
    return out.to(q.data.device());
  }

  torch::Tensor dequantize(const QuantizedWeight& q) const override {
    const torch::Tensor bytes = q.data.cpu().contiguous();
    torch::Tensor out = torch::empty(q.shape, torch::kFloat);
    kernels::dequantize_gguf_ref(
        bytes.const_data_ptr<uint8_t>(),
        out.numel(),
        gguf_type(q.spec),
        out.mutable_data_ptr<float>());
    return out.to(q.data.device());
  }

  // The blocks hold their own half scales; `scale` is a float32 view of them.
  int64_t storage_bytes(const QuantizedWeight& q) const override {
    return q.data.numel() * q.data.element_size();
  }
};

} // namespace

const Format& gguf_format() {
  static const GgufFormat format;
  return format;
}

} // namespace qat
