// CUDA implementations of the simulated-matmul ops: the row quantizer and the
// epilogue of kernels/cuda/qmatmul.cu around cuBLASLt's tensor-core GEMMs
// (through ATen), on the current stream; and quant_linear under bf16 autocast.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/cuda/qmatmul.cuh"
#include "ops/internal.h"
#include "ops/ops.h"
#include "ops/qmatmul_impl.h"

namespace qat::ops {
namespace {

using at::Tensor;

void check_launch(cudaError_t status) {
  TORCH_CHECK(
      status == cudaSuccess,
      "qat: CUDA kernel launch failed: ",
      cudaGetErrorString(status));
}

int64_t round_up(int64_t x, int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// t ([rows, cols], 1-byte codes) zero-padded to [rows_to, cols_to]: zero codes
// (int8 0, e4m3fn +0) add nothing to any sum.
Tensor pad_codes(const Tensor& t, int64_t rows_to, int64_t cols_to) {
  if (t.size(0) == rows_to && t.size(1) == cols_to)
    return t;
  return at::constant_pad_nd(
             t.view(at::kByte),
             {0, cols_to - t.size(1), 0, rows_to - t.size(0)},
             0)
      .view(t.scalar_type());
}

Tensor pad_vector(const Tensor& v, int64_t size_to) {
  return v.size(0) == size_to
      ? v
      : at::constant_pad_nd(v, {0, size_to - v.size(0)}, 0);
}

std::tuple<Tensor, Tensor, Tensor> quantize_rows_cuda(
    const Tensor& input,
    const std::optional<Tensor>& scale,
    c10::string_view format) {
  const c10::cuda::CUDAGuard guard(input.device());
  const detail::QuantizeRowsCall call =
      detail::prepare_quantize_rows(input, scale, format);
  detail::dispatch_matmul_format(call.format, [&](auto fmt) {
    constexpr kernels::MatmulFormat F = decltype(fmt)::value;
    detail::dispatch_float_types(call.input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      check_launch(kernels::cuda::quantize_rows<F, T>(
          detail::data_as<T>(call.input),
          call.input.size(0),
          call.input.size(1),
          call.scales(),
          call.outputs<F>(),
          at::cuda::getCurrentCUDAStream()));
    });
  });
  return {call.codes, call.row_scale, call.mask};
}

// out (float32 or bfloat16) = the epilogue over accumulators with leading
// dimension ld.
template <typename Acc>
Tensor dequantize(
    const detail::QMatmulCall& call,
    const Tensor& acc,
    int64_t ld) {
  Tensor out =
      at::empty({call.m, call.n}, call.a.options().dtype(call.out_dtype));
  detail::dispatch_float_types(call.out_dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    check_launch(kernels::cuda::dequantize<Acc, T>(
        acc.const_data_ptr<Acc>(),
        ld,
        call.epilogue(),
        detail::data_as<T>(out),
        call.m,
        call.n,
        at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

// INT8: at::_int_mm is cuBLASLt's int8 GEMM on the tensor cores, int32
// accumulators (exact). cuBLASLt cannot dequantize with a scale per row and
// per column into float or bf16 itself (its int8 GEMMs write int32, or int8
// with one alpha vector), so our memory-bound epilogue reads the int32 sums
// once; see docs/BENCHMARKS.md for what that pass costs. _int_mm's shape
// rules (m > 16, k and n multiples of 8) are met by zero padding.
Tensor int8_matmul(const detail::QMatmulCall& call) {
  const int64_t kp = round_up(call.k, 8), np = round_up(call.n, 8);
  const int64_t mp = call.m > 16 ? call.m : 32;
  const Tensor acc =
      at::_int_mm(pad_codes(call.a, mp, kp), pad_codes(call.b, np, kp).t());
  return dequantize<int32_t>(call, acc, np);
}

// FP8: at::_scaled_mm (cuBLASLt's FP8 GEMM on Hopper's tensor cores, float
// accumulators promoted at full precision: use_fast_accum = false). For a
// bf16 output the row and column scales and the bias are applied in its own
// epilogue (row-wise scaling), with no pass of ours. Row-wise scaling does not
// write float32, so a float32 output takes unit scales and float32
// accumulators, then our epilogue: the reference's own. Its shape rules (k
// and n multiples of 16) are met by zero padding.
Tensor fp8_matmul(const detail::QMatmulCall& call) {
  const int64_t kp = round_up(call.k, 16), np = round_up(call.n, 16);
  const Tensor a = pad_codes(call.a, call.m, kp);
  const Tensor b = pad_codes(call.b, np, kp).t();
  if (call.out_dtype == at::kFloat) {
    const Tensor one = at::ones({}, call.a_scale.options());
    const Tensor acc = at::_scaled_mm(
        a, b, one, one, std::nullopt, std::nullopt, at::kFloat, false);
    return dequantize<float>(call, acc, np);
  }
  std::optional<Tensor> bias;
  if (call.bias.defined())
    bias = pad_vector(call.bias, np).to(at::kBFloat16);
  const Tensor out = at::_scaled_mm(
      a,
      b,
      call.a_scale.view({call.m, 1}),
      pad_vector(call.b_scale, np).view({1, np}),
      bias,
      std::nullopt,
      at::kBFloat16,
      false);
  return np == call.n ? out : out.narrow(1, 0, call.n).contiguous();
}

Tensor qmatmul_cuda(
    const Tensor& a,
    const Tensor& b,
    const Tensor& a_scale,
    const Tensor& b_scale,
    const std::optional<Tensor>& bias,
    at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(a.device());
  const detail::QMatmulCall call =
      detail::prepare_qmatmul(a, b, a_scale, b_scale, bias, out_dtype);
  if (call.m == 0 || call.n == 0)
    return at::empty({call.m, call.n}, a.options().dtype(out_dtype));
  return call.format == kernels::MatmulFormat::int8 ? int8_matmul(call)
                                                    : fp8_matmul(call);
}

// Under bf16 autocast the layer computes and returns bf16, as a Linear does
// there (the codes do not depend on the input's precision; the backward's
// matmuls then run in bf16). Other autocast dtypes leave the input as it is.
Tensor quant_linear_autocast(
    const Tensor& input,
    const Tensor& weight,
    const Tensor& weight_scale,
    const std::optional<Tensor>& bias,
    c10::string_view format) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      c10::DispatchKey::AutocastCUDA);
  const bool bf16 =
      at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  return quant_linear(
      bf16 ? at::autocast::cached_cast(at::kBFloat16, input) : input,
      weight,
      weight_scale,
      bias,
      std::string_view(format.data(), format.size()));
}

} // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  m.impl("quantize_rows", quantize_rows_cuda);
  m.impl("qmatmul", qmatmul_cuda);
}

TORCH_LIBRARY_IMPL(qat, AutocastCUDA, m) {
  m.impl("quant_linear", quant_linear_autocast);
}

} // namespace qat::ops
