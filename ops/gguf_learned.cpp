// Learned K-quant representations: the halves of a representation as
// floats and back, and fake_quant_gguf_learned, whose forward is
// fake_quant_gguf_fixed under the learned halves (one definition for every
// backend) and whose backward is the straight-through mask for the input and
// qat::gguf_representation_backward for d and dmin (the derivation is at
// kernels/ref/gguf_kquant_ref.h's kquant_representation_grad).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/internal.h"
#include "ops/ops.h"

namespace qat::ops {
namespace {

using Tensor = at::Tensor;

// Where a representation's halves lie in its bytes (little-endian, as ggml
// stores them and as x86-64 and CUDA read them): d at the block's scale
// offset, dmin right after it.
struct HalvesAt {
  int64_t d, dmin; // byte offsets in a representation; dmin -1 if none
};
HalvesAt halves_at(std::string_view op, std::string_view type) {
  const auto& info =
      kernels::gguf_type_info(detail::parse_kquant_type(op, type));
  const int64_t d = info.scale_offset - info.representation_offset;
  return {d, info.has_minimum ? d + 2 : -1};
}

Tensor read_half(const Tensor& representations, int64_t at) {
  return representations.narrow(-1, at, 2)
      .contiguous()
      .view(at::kHalf)
      .squeeze(-1)
      .to(at::kFloat);
}

void write_half(Tensor& representations, int64_t at, const Tensor& value) {
  representations.narrow(-1, at, 2).copy_(
      value.detach().to(at::kHalf).unsqueeze(-1).contiguous().view(at::kByte));
}

} // namespace

std::tuple<Tensor, Tensor> gguf_representation_halves(
    const Tensor& representations,
    std::string_view type) {
  const HalvesAt at = halves_at("qat::gguf_representation_halves", type);
  const Tensor d = read_half(representations, at.d);
  return {
      d, at.dmin < 0 ? at::zeros_like(d) : read_half(representations, at.dmin)};
}

Tensor gguf_with_halves(
    const Tensor& representations,
    const Tensor& d,
    const Tensor& dmin,
    std::string_view type) {
  constexpr std::string_view op = "qat::gguf_with_halves";
  const HalvesAt at = halves_at(op, type);
  const auto expected = representations.sizes().slice(
      0, std::max<int64_t>(representations.dim() - 1, 0));
  TORCH_CHECK(
      d.sizes() == expected && dmin.sizes() == expected,
      op,
      ": d and dmin must have the representations' shape without its last "
      "dimension, ",
      expected,
      ", got ",
      d.sizes(),
      " and ",
      dmin.sizes());
  Tensor out = representations.detach().clone();
  write_half(out, at.d, d);
  if (at.dmin >= 0)
    write_half(out, at.dmin, dmin);
  return out;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FakeQuantGgufLearnedFunction
    : public torch::autograd::Function<FakeQuantGgufLearnedFunction> {
 public:
  static Tensor forward(
      AutogradContext* ctx,
      const Tensor& input,
      const Tensor& representations,
      const Tensor& d,
      const Tensor& dmin,
      c10::string_view type,
      double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const Tensor learned = gguf_with_halves(representations, d, dmin, type);
    auto [output, mask] = fake_quant_gguf_fixed_cachemask(input, learned, type);
    ctx->save_for_backward({input, learned, mask});
    ctx->saved_data["type"] = std::string(type);
    ctx->saved_data["grad_factor"] = grad_factor;
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string type = ctx->saved_data["type"].toStringRef();
    const double grad_factor = ctx->saved_data["grad_factor"].toDouble();
    Tensor grad_d, grad_dmin;
    if (ctx->needs_input_grad(2) || ctx->needs_input_grad(3)) {
      std::tie(grad_d, grad_dmin) =
          gguf_representation_backward(grads[0], saved[0], saved[1], type);
      grad_d.mul_(grad_factor);
      grad_dmin.mul_(grad_factor);
    }
    return {
        ctx->needs_input_grad(0) ? mask_backward(grads[0], saved[2]) : Tensor(),
        {},
        ctx->needs_input_grad(2) ? grad_d : Tensor(),
        ctx->needs_input_grad(3) ? grad_dmin : Tensor(),
        {},
        {}};
  }
};

Tensor fake_quant_gguf_learned_autograd(
    const Tensor& input,
    const Tensor& representations,
    const Tensor& d,
    const Tensor& dmin,
    c10::string_view type,
    double grad_factor) {
  return FakeQuantGgufLearnedFunction::apply(
      input, representations, d, dmin, type, grad_factor);
}

Tensor fake_quant_gguf_learned_composite(
    const Tensor& input,
    const Tensor& representations,
    const Tensor& d,
    const Tensor& dmin,
    c10::string_view type,
    double) {
  return fake_quant_gguf_fixed(
      input, gguf_with_halves(representations, d, dmin, type), type);
}

} // namespace

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("fake_quant_gguf_learned", fake_quant_gguf_learned_autograd);
}

TORCH_LIBRARY_IMPL(qat, CompositeExplicitAutograd, m) {
  m.impl("fake_quant_gguf_learned", fake_quant_gguf_learned_composite);
}

} // namespace qat::ops
