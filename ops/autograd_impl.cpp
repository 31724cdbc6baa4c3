// Autograd registrations. The forward ops redispatch below autograd to the
// backend kernels; the backward of each estimator is one op call (the mask or
// LSQ kernels), as in ATen's cachemask design. Gradients (derivations in
// qat/fake_quant.h):
//   fake_quant_affine, fake_quant_fp8,
//   fake_quant_gguf                    d input = grad * mask (straight-through)
//   fake_quant_gguf_fixed              d input = grad * mask; the kept
//                                      representation gets no gradient
//   fake_quant_microscale              d input = grad * mask; the global
//                                      scale gets no gradient
//   fake_quant_lsq                     d input, d scale, d zero_point (LSQ+)
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/internal.h"
#include "ops/ops.h"

namespace qat::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool needs_grad(const at::Tensor& input) {
  return at::GradMode::is_enabled() && input.requires_grad();
}

class FakeQuantAffineFunction
    : public torch::autograd::Function<FakeQuantAffineFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] = fake_quant_affine_cachemask(
        input, scale, zero_point, axis, group_size, quant_min, quant_max);
    ctx->save_for_backward({mask});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {mask_backward(grads[0], mask), {}, {}, {}, {}, {}, {}};
  }
};

class FakeQuantFp8Function
    : public torch::autograd::Function<FakeQuantFp8Function> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      std::optional<int64_t> axis,
      int64_t group_size,
      c10::string_view format) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] =
        fake_quant_fp8_cachemask(input, scale, axis, group_size, format);
    ctx->save_for_backward({mask});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {mask_backward(grads[0], mask), {}, {}, {}, {}};
  }
};

class FakeQuantGgufFunction
    : public torch::autograd::Function<FakeQuantGgufFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      c10::string_view type) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] = fake_quant_gguf_cachemask(input, type);
    ctx->save_for_backward({mask});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {mask_backward(grads[0], mask), {}};
  }
};

class FakeQuantGgufFixedFunction
    : public torch::autograd::Function<FakeQuantGgufFixedFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& representations,
      c10::string_view type) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] =
        fake_quant_gguf_fixed_cachemask(input, representations, type);
    ctx->save_for_backward({mask});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {mask_backward(grads[0], mask), {}, {}};
  }
};

class FakeQuantMicroscaleFunction
    : public torch::autograd::Function<FakeQuantMicroscaleFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      c10::string_view format,
      const std::optional<at::Tensor>& global_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] =
        fake_quant_microscale_cachemask(input, format, global_scale);
    ctx->save_for_backward({mask});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {mask_backward(grads[0], mask), {}, {}};
  }
};

class FakeQuantLsqFunction
    : public torch::autograd::Function<FakeQuantLsqFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max,
      double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["axis"] = axis ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["grad_factor"] = grad_factor;
    return fake_quant_lsq(
        input,
        scale,
        zero_point,
        axis,
        group_size,
        quant_min,
        quant_max,
        grad_factor);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const c10::IValue& axis = ctx->saved_data["axis"];
    auto [dx, dscale, dzero_point] = fake_quant_lsq_backward(
        grads[0],
        saved[0],
        saved[1],
        saved[2],
        axis.isNone() ? std::nullopt : std::optional<int64_t>(axis.toInt()),
        ctx->saved_data["group_size"].toInt(),
        ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(),
        ctx->saved_data["grad_factor"].toDouble());
    return {
        dx,
        ctx->needs_input_grad(1) ? dscale : at::Tensor(),
        ctx->needs_input_grad(2) ? dzero_point : at::Tensor(),
        {},
        {},
        {},
        {},
        {}};
  }
};

at::Tensor fake_quant_affine_autograd(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  if (!needs_grad(input)) {
    // Inference or frozen input: skip the mask.
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_affine(
        input, scale, zero_point, axis, group_size, quant_min, quant_max);
  }
  return FakeQuantAffineFunction::apply(
      input, scale, zero_point, axis, group_size, quant_min, quant_max);
}

at::Tensor fake_quant_fp8_autograd(
    const at::Tensor& input,
    const at::Tensor& scale,
    std::optional<int64_t> axis,
    int64_t group_size,
    c10::string_view format) {
  if (!needs_grad(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_fp8(input, scale, axis, group_size, format);
  }
  return FakeQuantFp8Function::apply(input, scale, axis, group_size, format);
}

at::Tensor fake_quant_gguf_autograd(
    const at::Tensor& input,
    c10::string_view type) {
  if (!needs_grad(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_gguf(input, type);
  }
  return FakeQuantGgufFunction::apply(input, type);
}

at::Tensor fake_quant_gguf_fixed_autograd(
    const at::Tensor& input,
    const at::Tensor& representations,
    c10::string_view type) {
  if (!needs_grad(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_gguf_fixed(input, representations, type);
  }
  return FakeQuantGgufFixedFunction::apply(input, representations, type);
}

at::Tensor fake_quant_microscale_autograd(
    const at::Tensor& input,
    c10::string_view format,
    const std::optional<at::Tensor>& global_scale) {
  if (!needs_grad(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_microscale(input, format, global_scale);
  }
  return FakeQuantMicroscaleFunction::apply(input, format, global_scale);
}

at::Tensor fake_quant_lsq_autograd(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  return FakeQuantLsqFunction::apply(
      input,
      scale,
      zero_point,
      axis,
      group_size,
      quant_min,
      quant_max,
      grad_factor);
}

// LSQ's forward is integer fake-quant with the learnable zero point rounded:
// one definition for every backend.
at::Tensor fake_quant_lsq_composite(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  return fake_quant_affine(
      input,
      scale.detach(),
      detail::round_zero_point(zero_point, quant_min, quant_max),
      axis,
      group_size,
      quant_min,
      quant_max);
}

} // namespace

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("fake_quant_affine", fake_quant_affine_autograd);
  m.impl("fake_quant_fp8", fake_quant_fp8_autograd);
  m.impl("fake_quant_gguf", fake_quant_gguf_autograd);
  m.impl("fake_quant_gguf_fixed", fake_quant_gguf_fixed_autograd);
  m.impl("fake_quant_microscale", fake_quant_microscale_autograd);
  m.impl("fake_quant_lsq", fake_quant_lsq_autograd);
}

TORCH_LIBRARY_IMPL(qat, CompositeExplicitAutograd, m) {
  m.impl("fake_quant_lsq", fake_quant_lsq_composite);
}

} // namespace qat::ops
