// Shared by the op implementations (CPU, CUDA, Meta, Autograd): argument checks
// with messages that say what is wrong, and the mapping from (axis, group_size)
// to a kernel RowLayout.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <optional>
#include <string_view>

#include "kernels/ref/fake_quant_ref.h"
#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"

namespace qat::ops::detail {

// A fake-quant call, checked and laid out for a kernel. Per-group quantization
// along an axis that is not the last one moves that axis last (and back
// afterwards), so that every kernel only sees contiguous rows.
struct Prepared {
  at::Tensor input;      // contiguous, axis moved last when `moved`
  at::Tensor scale;      // float32, contiguous, one value per parameter index
  at::Tensor zero_point; // int32, contiguous (undefined for FP8)
  kernels::RowLayout layout;
  std::optional<int64_t> moved_axis; // the original axis when it was moved last

  // Brings a result computed on `input`'s layout back to the caller's shape.
  at::Tensor restore(const at::Tensor& result) const;
};

// Checks input/scale/zero_point against the granularity of (axis, group_size):
//   axis == nullopt            per tensor: scale and zero_point have one value
//   axis, group_size == 0      per channel: scale is 1-D, input.size(axis)
//                              values
//   axis, group_size > 0       per group: group_size divides input.size(axis),
//                              and scale has input's shape with that size
//                              divided by group_size (per token: axis = -1,
//                              group_size = input.size(-1))
// `op` names the caller in error messages. zero_point may be undefined (FP8).
Prepared prepare(
    std::string_view op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size);

// Checks the integer code range.
void check_quant_range(
    std::string_view op,
    int64_t quant_min,
    int64_t quant_max);

// On CPU: every scale positive and finite, every zero point inside [quant_min,
// quant_max]. (Not on CUDA, where reading the values back would synchronise
// every call.)
void check_param_values(
    std::string_view op,
    const Prepared& p,
    int64_t quant_min,
    int64_t quant_max);

// LSQ's learnable float zero point, rounded half to even and clamped as ATen's
// forward does.
at::Tensor round_zero_point(
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

kernels::Fp8Format parse_fp8_format(
    std::string_view op,
    std::string_view format);

// "q8_0" or "q4_0".
kernels::GgufType parse_gguf_type(std::string_view op, std::string_view type);
// float32 / bfloat16, last dimension a multiple of the 32-element block.
// A K-quant type (the ones with a separate representation), or an error
// naming `op`.
kernels::GgufType parse_kquant_type(std::string_view op, std::string_view type);
// [..., n / 256, representation bytes] for an input [..., n].
std::vector<int64_t> representation_shape(
    const at::Tensor& input,
    kernels::GgufType type);
void check_representations(
    std::string_view op,
    const at::Tensor& input,
    const at::Tensor& representations,
    kernels::GgufType type);
void check_gguf_input(
    std::string_view op,
    const at::Tensor& input,
    kernels::GgufType type);

// "nvfp4", "mxfp4" or "mxfp8", or an error naming `op` and the formats.
kernels::MicroscaleFormat parse_microscale_format(
    std::string_view op,
    std::string_view format);
// float32 / bfloat16 input whose last dimension is a multiple of the format's
// block; a global scale (float32 [1] on the input's device) for NVFP4 only.
void check_microscale_input(
    std::string_view op,
    const at::Tensor& input,
    const std::optional<at::Tensor>& global_scale,
    kernels::MicroscaleFormat format);
// A given NVFP4 global scale's value (read on the host): finite and positive,
// else an error naming `op`.
float checked_global_scale(std::string_view op, const at::Tensor& global_scale);

// Calls fn with a null pointer of the kernel element type for `dtype` (float or
// BFloat16); the kernels' BFloat16 has the layout of c10::BFloat16.
template <typename Fn>
void dispatch_float_types(at::ScalarType dtype, Fn&& fn) {
  if (dtype == at::kBFloat16) {
    fn(static_cast<kernels::BFloat16*>(nullptr));
  } else {
    fn(static_cast<float*>(nullptr));
  }
}

template <typename T>
T* data_as(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

inline kernels::AffineParams affine_params(
    const Prepared& p,
    int64_t quant_min,
    int64_t quant_max) {
  return {
      p.scale.const_data_ptr<float>(),
      p.zero_point.const_data_ptr<int32_t>(),
      static_cast<int32_t>(quant_min),
      static_cast<int32_t>(quant_max)};
}

// The bool mask of the in-range elements, or an undefined tensor when it is not
// wanted.
inline at::Tensor empty_mask_like(const at::Tensor& t, bool wanted) {
  return wanted ? at::empty_like(t, t.options().dtype(at::kBool))
                : at::Tensor();
}

} // namespace qat::ops::detail
