// Shared by the simulated-matmul ops (ops/qmatmul.cpp: schemas, CPU, Meta,
// autograd; ops/cuda_impl_qmatmul.cpp: CUDA): the argument checks, with
// messages that say what is wrong, the outputs' allocation, and the dispatch
// from a format to the kernels' template argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <type_traits>

#include "kernels/ref/qmatmul_ref.h"

namespace qat::ops::detail {

// "int8", or "e4m3fn" (also "e4m3").
kernels::MatmulFormat parse_matmul_format(
    std::string_view op,
    std::string_view format);

// A checked quantize_rows call, its outputs allocated on the input's device.
struct QuantizeRowsCall {
  kernels::MatmulFormat format = kernels::MatmulFormat::int8;
  at::Tensor input;       // 2-D, contiguous, float32 or bfloat16
  at::Tensor given_scale; // float32, contiguous, 1 or rows values; undefined
                          // when dynamic
  at::Tensor codes;       // [rows, cols] int8 / float8_e4m3fn
  at::Tensor row_scale;   // [rows] float32
  at::Tensor mask;        // [rows, cols] bool

  kernels::RowScales scales() const;
  template <kernels::MatmulFormat F>
  kernels::QuantizedRows<F> outputs() const {
    return {
        static_cast<kernels::MatmulCode<F>*>(codes.data_ptr()),
        row_scale.data_ptr<float>(),
        static_cast<uint8_t*>(mask.data_ptr())};
  }
};
QuantizeRowsCall prepare_quantize_rows(
    const at::Tensor& input,
    const std::optional<at::Tensor>& scale,
    std::string_view format);

// A checked qmatmul call: a [m, k] and b [n, k] codes of one format, float32
// scales, the bias as float32 (undefined when there is none).
struct QMatmulCall {
  kernels::MatmulFormat format = kernels::MatmulFormat::int8;
  int64_t m = 0, n = 0, k = 0;
  at::Tensor a, b, a_scale, b_scale, bias;
  at::ScalarType out_dtype = at::kFloat;

  kernels::Epilogue epilogue() const;
};
QMatmulCall prepare_qmatmul(
    const at::Tensor& a,
    const at::Tensor& b,
    const at::Tensor& a_scale,
    const at::Tensor& b_scale,
    const std::optional<at::Tensor>& bias,
    at::ScalarType out_dtype);

// Calls fn with std::integral_constant<MatmulFormat, format>.
template <typename Fn>
void dispatch_matmul_format(kernels::MatmulFormat format, Fn&& fn) {
  using kernels::MatmulFormat;
  if (format == MatmulFormat::int8) {
    fn(std::integral_constant<MatmulFormat, MatmulFormat::int8>{});
  } else {
    fn(std::integral_constant<MatmulFormat, MatmulFormat::e4m3fn>{});
  }
}

} // namespace qat::ops::detail
