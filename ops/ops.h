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

// GGUF block fake-quant ("q8_0", "q4_0", "q5_0", "q5_1", "q4_k", "q5_k",
// "q6_k"; kernels/ref/gguf_ref.h): blocks of 32 (K-quants: 256) along the last
// dimension, each with the scales ggml's quantizer computes from the block,
// dequantized as ggml reads what it stores. The K-quants run on the CPU only.
at::Tensor fake_quant_gguf(const at::Tensor& input, std::string_view type);
std::tuple<at::Tensor, at::Tensor> fake_quant_gguf_cachemask(
    const at::Tensor& input,
    std::string_view type);

// The K-quants (q4_k, q5_k, q6_k) with a kept representation: gguf_search
// finds each super-block's (ggml's search, as its quantizer runs it) as the
// bytes ggml stores for it, uint8 [..., n / 256, 16 or 18]; the fixed
// fake-quant rounds each value to its code under that representation, with a
// straight-through gradient for the input where nothing clips. CPU only.
at::Tensor gguf_search(const at::Tensor& input, std::string_view type);
at::Tensor fake_quant_gguf_fixed(
    const at::Tensor& input,
    const at::Tensor& representations,
    std::string_view type);
std::tuple<at::Tensor, at::Tensor> fake_quant_gguf_fixed_cachemask(
    const at::Tensor& input,
    const at::Tensor& representations,
    std::string_view type);

// Learned K-quant representations (LSQ-style): each super-block's halves d
// and dmin are learned as floats, shaped as the representations without
// their last dimension (dmin is unused by q6_k, which has none), while the
// sub-block scales and mins stay as gguf_search found them.
//   gguf_representation_halves  a representation's halves, as floats;
//   gguf_with_halves            the representations with d and dmin, rounded
//                               to half (to nearest even), put in;
//   fake_quant_gguf_learned     fake_quant_gguf_fixed under gguf_with_halves,
//                               differentiable in the input (straight
//                               through), d and dmin (LSQ's gradient, times
//                               grad_factor; straight through the rounding
//                               to half);
//   gguf_representation_backward  the unscaled gradients for d and dmin.
// The derivation is at kernels/ref/gguf_kquant_ref.h's
// kquant_representation_grad. CPU only, as the K-quants are.
std::tuple<at::Tensor, at::Tensor> gguf_representation_halves(
    const at::Tensor& representations,
    std::string_view type);
at::Tensor gguf_with_halves(
    const at::Tensor& representations,
    const at::Tensor& d,
    const at::Tensor& dmin,
    std::string_view type);
at::Tensor fake_quant_gguf_learned(
    const at::Tensor& input,
    const at::Tensor& representations,
    const at::Tensor& d,
    const at::Tensor& dmin,
    std::string_view type,
    double grad_factor);
std::tuple<at::Tensor, at::Tensor> gguf_representation_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& representations,
    std::string_view type);

// Microscaling fake-quant ("nvfp4", "mxfp4", "mxfp8"; kernels/microscale_math.h):
// blocks of 16 (NVFP4) or 32 along the last dimension, each block's scale
// computed from it as compressed-tensors' calculate_qparams does, the values
// rounded to e2m1 (FP4) or e4m3fn. NVFP4 also divides each block scale by a
// per-tensor float32 global scale: `global_scale` [1] when given (calibrated
// or kept), else computed from the input (generate_gparam of its amax); the MX
// formats have none. Straight-through gradient for the input where nothing
// clips; the global scale gets none. Float32 or bfloat16 input (computed in
// float32, the output rounded back).
at::Tensor fake_quant_microscale(
    const at::Tensor& input,
    std::string_view format,
    const std::optional<at::Tensor>& global_scale);
std::tuple<at::Tensor, at::Tensor> fake_quant_microscale_cachemask(
    const at::Tensor& input,
    std::string_view format,
    const std::optional<at::Tensor>& global_scale);

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

// Simulated matmuls (ops/qmatmul.cpp): the integer / FP8 tensor-core form of
// the fake-quant composition of the w8a8_int8 and fp8_e4m3 presets.
//
// A matrix [rows, cols] to codes of `format` ("int8": [-128, 127], or
// "e4m3fn") with one scale per row: dynamic (scale = nullopt: computed from
// the row as qat's symmetric observers do) or given (one value, or one per
// row). Returns (codes: int8 or float8_e4m3fn, row_scale: float [rows], mask:
// bool, 1 where in range); codes * row_scale is the fake-quantized matrix.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows(
    const at::Tensor& input,
    const std::optional<at::Tensor>& scale,
    std::string_view format);

// out[i, j] = a_scale[i] * b_scale[j] * sum_k a[i, k] b[j, k] + bias[j] for
// codes a [m, k] and b [n, k] of one format (int8 sums exact in int32, e4m3fn
// sums in float), out_dtype float32 or bfloat16.
at::Tensor qmatmul(
    const at::Tensor& a,
    const at::Tensor& b,
    const at::Tensor& a_scale,
    const at::Tensor& b_scale,
    const std::optional<at::Tensor>& bias,
    at::ScalarType out_dtype);

// y = x' w'^T + bias in `format`: x' the input quantized per token
// (dynamic), w' the weight [out, in] as codes of weight_scale (one per output
// channel, or one). The weight is meant to be a weight quantizer's output, on
// that grid already (its codes are then exact); its gradient is straight
// through and unmasked, the quantizer's backward masking it. y in the input's
// dtype (bfloat16 under CUDA bf16 autocast). Gradients to input (masked as the
// per-token fake-quant does), weight and bias; derivation in ops/qmatmul.cpp.
//
// Example:
//   auto w = torch::randn({64, 256}, torch::kCUDA);
//   auto s = w.abs().amax(1) / 127;
//   auto wq = qat::ops::fake_quant_affine(w, s, zeros, 0, 0, -128, 127);
//   auto y = qat::ops::quant_linear(x, wq, s, std::nullopt, "int8");
at::Tensor quant_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    std::string_view format);

} // namespace qat::ops
