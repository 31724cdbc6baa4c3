// C++ entry points to the qat operator library (TORCH_LIBRARY(qat), see
// ops/schema.cpp). Each call goes through the dispatcher, so CPU, CUDA, Meta
// and Autograd are chosen as for any ATen op.
//
// Granularity is given by (axis, group_size):
//   axis = nullopt              per tensor: scale and zero_point hold one value
//   axis = a, group_size = 0    per channel along a: scale is 1-D with
//                               input.size(a) values
//   axis = a, group_size = g    per group of g along a: scale has input's
//                               shape with size(a) divided by g; per token is
//                               axis = -1, g = input.size(-1)
//
// Example:
//   auto w = torch::randn({64, 256});
//   auto scale = w.abs().amax(1) / 127;  // per output channel
//   auto zp = torch::zeros({64}, torch::kInt);
//   auto wq = qat::ops::fake_quant_affine(w, scale, zp, 0, 0, -127, 127);
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace qat::ops {

// Integer affine fake-quant, straight-through gradient to input (zero outside
// the code range).
at::Tensor fake_quant_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max);

// The same, without autograd, returning the in-range mask as well.
std::tuple<at::Tensor, at::Tensor> fake_quant_affine_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max);

// FP8 fake-quant ("e4m3fn" or "e5m2"): decode(encode(input / scale)) * scale,
// saturating.
at::Tensor fake_quant_fp8(
    const at::Tensor& input,
    const at::Tensor& scale,
    std::optional<int64_t> axis,
    int64_t group_size,
    std::string_view format);
std::tuple<at::Tensor, at::Tensor> fake_quant_fp8_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    std::optional<int64_t> axis,
    int64_t group_size,
    std::string_view format);

// GGUF block fake-quant ("q8_0" or "q4_0"): blocks of 32 along the last
// dimension, each with its own scale computed from the block (the rules in
// kernels/quant_math.h), dequantized with the half-precision scale GGUF stores.
at::Tensor fake_quant_gguf(const at::Tensor& input, std::string_view type);
std::tuple<at::Tensor, at::Tensor> fake_quant_gguf_cachemask(
    const at::Tensor& input,
    std::string_view type);

// grad * mask.
at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask);

// LSQ / LSQ+: gradients flow to input, scale and (float) zero_point;
// grad_factor scales the parameter gradients (LSQ: 1 / sqrt(numel *
// quant_max)).
at::Tensor fake_quant_lsq(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor);
std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_lsq_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor);

} // namespace qat::ops
