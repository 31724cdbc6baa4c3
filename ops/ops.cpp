// Typed dispatcher handles behind the functions of ops/ops.h.
#include <ATen/core/dispatch/Dispatcher.h>

#include "ops/ops.h"

namespace qat::ops {
namespace {

using Tensor = at::Tensor;
using OptInt = std::optional<int64_t>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<Signature>();
}

} // namespace

Tensor fake_quant_affine(
    const Tensor& input,
    const Tensor& scale,
    const Tensor& zero_point,
    OptInt axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  static const auto op = typed_op<Tensor(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      OptInt,
      int64_t,
      int64_t,
      int64_t)>("qat::fake_quant_affine");
  return op.call(
      input, scale, zero_point, axis, group_size, quant_min, quant_max);
}

std::tuple<Tensor, Tensor> fake_quant_affine_cachemask(
    const Tensor& input,
    const Tensor& scale,
    const Tensor& zero_point,
    OptInt axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor>(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      OptInt,
      int64_t,
      int64_t,
      int64_t)>("qat::fake_quant_affine_cachemask");
  return op.call(
      input, scale, zero_point, axis, group_size, quant_min, quant_max);
}

Tensor fake_quant_fp8(
    const Tensor& input,
    const Tensor& scale,
    OptInt axis,
    int64_t group_size,
    std::string_view format) {
  static const auto op = typed_op<Tensor(
      const Tensor&, const Tensor&, OptInt, int64_t, c10::string_view)>(
      "qat::fake_quant_fp8");
  return op.call(
      input,
      scale,
      axis,
      group_size,
      c10::string_view(format.data(), format.size()));
}

std::tuple<Tensor, Tensor> fake_quant_fp8_cachemask(
    const Tensor& input,
    const Tensor& scale,
    OptInt axis,
    int64_t group_size,
    std::string_view format) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor>(
      const Tensor&, const Tensor&, OptInt, int64_t, c10::string_view)>(
      "qat::fake_quant_fp8_cachemask");
  return op.call(
      input,
      scale,
      axis,
      group_size,
      c10::string_view(format.data(), format.size()));
}

Tensor fake_quant_gguf(const Tensor& input, std::string_view type) {
  static const auto op =
      typed_op<Tensor(const Tensor&, c10::string_view)>("qat::fake_quant_gguf");
  return op.call(input, c10::string_view(type.data(), type.size()));
}

std::tuple<Tensor, Tensor> fake_quant_gguf_cachemask(
    const Tensor& input,
    std::string_view type) {
  static const auto op =
      typed_op<std::tuple<Tensor, Tensor>(const Tensor&, c10::string_view)>(
          "qat::fake_quant_gguf_cachemask");
  return op.call(input, c10::string_view(type.data(), type.size()));
}

Tensor gguf_search(const Tensor& input, std::string_view type) {
  static const auto op =
      typed_op<Tensor(const Tensor&, c10::string_view)>("qat::gguf_search");
  // Integer bytes: nothing to differentiate.
  return op.call(input.detach(), c10::string_view(type.data(), type.size()));
}

Tensor fake_quant_gguf_fixed(
    const Tensor& input,
    const Tensor& representations,
    std::string_view type) {
  static const auto op =
      typed_op<Tensor(const Tensor&, const Tensor&, c10::string_view)>(
          "qat::fake_quant_gguf_fixed");
  return op.call(
      input, representations, c10::string_view(type.data(), type.size()));
}

std::tuple<Tensor, Tensor> fake_quant_gguf_fixed_cachemask(
    const Tensor& input,
    const Tensor& representations,
    std::string_view type) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor>(
      const Tensor&, const Tensor&, c10::string_view)>(
      "qat::fake_quant_gguf_fixed_cachemask");
  return op.call(
      input, representations, c10::string_view(type.data(), type.size()));
}

Tensor fake_quant_gguf_learned(
    const Tensor& input,
    const Tensor& representations,
    const Tensor& d,
    const Tensor& dmin,
    std::string_view type,
    double grad_factor) {
  static const auto op = typed_op<Tensor(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      const Tensor&,
      c10::string_view,
      double)>("qat::fake_quant_gguf_learned");
  return op.call(
      input,
      representations,
      d,
      dmin,
      c10::string_view(type.data(), type.size()),
      grad_factor);
}

std::tuple<Tensor, Tensor> gguf_representation_backward(
    const Tensor& grad,
    const Tensor& input,
    const Tensor& representations,
    std::string_view type) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, c10::string_view)>(
      "qat::gguf_representation_backward");
  return op.call(
      grad, input, representations, c10::string_view(type.data(), type.size()));
}

Tensor fake_quant_microscale(
    const Tensor& input,
    std::string_view format,
    const std::optional<Tensor>& global_scale) {
  static const auto op = typed_op<Tensor(
      const Tensor&, c10::string_view, const std::optional<Tensor>&)>(
      "qat::fake_quant_microscale");
  return op.call(
      input, c10::string_view(format.data(), format.size()), global_scale);
}

std::tuple<Tensor, Tensor> fake_quant_microscale_cachemask(
    const Tensor& input,
    std::string_view format,
    const std::optional<Tensor>& global_scale) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor>(
      const Tensor&, c10::string_view, const std::optional<Tensor>&)>(
      "qat::fake_quant_microscale_cachemask");
  return op.call(
      input, c10::string_view(format.data(), format.size()), global_scale);
}

Tensor mask_backward(const Tensor& grad, const Tensor& mask) {
  static const auto op =
      typed_op<Tensor(const Tensor&, const Tensor&)>("qat::mask_backward");
  return op.call(grad, mask);
}

Tensor fake_quant_lsq(
    const Tensor& input,
    const Tensor& scale,
    const Tensor& zero_point,
    OptInt axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  static const auto op = typed_op<Tensor(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      OptInt,
      int64_t,
      int64_t,
      int64_t,
      double)>("qat::fake_quant_lsq");
  return op.call(
      input,
      scale,
      zero_point,
      axis,
      group_size,
      quant_min,
      quant_max,
      grad_factor);
}

std::tuple<Tensor, Tensor, Tensor> fake_quant_lsq_backward(
    const Tensor& grad,
    const Tensor& input,
    const Tensor& scale,
    const Tensor& zero_point,
    OptInt axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      const Tensor&,
      OptInt,
      int64_t,
      int64_t,
      int64_t,
      double)>("qat::fake_quant_lsq_backward");
  return op.call(
      grad,
      input,
      scale,
      zero_point,
      axis,
      group_size,
      quant_min,
      quant_max,
      grad_factor);
}

std::tuple<Tensor, Tensor, Tensor> quantize_rows(
    const Tensor& input,
    const std::optional<Tensor>& scale,
    std::string_view format) {
  static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const std::optional<Tensor>&, c10::string_view)>(
      "qat::quantize_rows");
  return op.call(input, scale, c10::string_view(format.data(), format.size()));
}

Tensor qmatmul(
    const Tensor& a,
    const Tensor& b,
    const Tensor& a_scale,
    const Tensor& b_scale,
    const std::optional<Tensor>& bias,
    at::ScalarType out_dtype) {
  static const auto op = typed_op<Tensor(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      const Tensor&,
      const std::optional<Tensor>&,
      at::ScalarType)>("qat::qmatmul");
  return op.call(a, b, a_scale, b_scale, bias, out_dtype);
}

Tensor quant_linear(
    const Tensor& input,
    const Tensor& weight,
    const Tensor& weight_scale,
    const std::optional<Tensor>& bias,
    std::string_view format) {
  static const auto op = typed_op<Tensor(
      const Tensor&,
      const Tensor&,
      const Tensor&,
      const std::optional<Tensor>&,
      c10::string_view)>("qat::quant_linear");
  return op.call(
      input,
      weight,
      weight_scale,
      bias,
      c10::string_view(format.data(), format.size()));
}

} // namespace qat::ops
