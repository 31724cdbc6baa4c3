// Torch-free reference of the simulated matmuls (qat::quantize_rows,
// qat::qmatmul, and qat::quant_linear built from them): the definition the
// CUDA path is tested against. Row-major matrices on raw pointers; each
// function covers rows [row_begin, row_end), so that the op layer can split
// them across threads.
//
// The formulas are MatmulCodec's and dequantize_acc in kernels/quant_math.h.
// For int8 the sums are exact in int32; for e4m3fn, products of two e4m3
// values are exact in float and the sums are taken in k order (the tensor
// cores' order differs: an error budget, not bits, in tests/test_cuda.cpp).
#pragma once

#include <cstdint>

#include "kernels/quant_math.h"

namespace qat::kernels {

template <MatmulFormat F>
using MatmulCode = typename MatmulCodec<F>::Code;
template <MatmulFormat F>
using MatmulAcc = typename MatmulCodec<F>::Acc;

// Where row r's scale comes from: computed from the row (dynamic, given ==
// nullptr), or given[r * stride] (stride 0: one scale for every row).
struct RowScales {
  const float* given = nullptr;
  int64_t stride = 0;
};

// The outputs of a row quantization of a [rows, cols] matrix: codes [rows,
// cols], the scale of each row [rows], and mask [rows, cols] (1 where the
// element was in range; may be null).
template <MatmulFormat F>
struct QuantizedRows {
  MatmulCode<F>* codes = nullptr;
  float* scale = nullptr;
  uint8_t* mask = nullptr;
};

// The dequantizing epilogue's operands: out[m, n] = dequantize_acc(acc[m, n],
// a_scale[m], b_scale[n], bias ? bias[n] : 0).
struct Epilogue {
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  const float* bias = nullptr; // may be null
};

// Rows [row_begin, row_end) of x ([rows, cols], row-major) to codes: row r's
// scale is MatmulCodec<F>::row_scale(max |x[r, :]|) when dynamic, else the
// given one; each element through MatmulCodec<F>::quantize. Defined for T =
// float and BFloat16.
template <MatmulFormat F, typename T>
void quantize_rows_ref(
    const T* x,
    int64_t cols,
    const RowScales& scales,
    const QuantizedRows<F>& out,
    int64_t row_begin,
    int64_t row_end);

// acc[m, j] = sum over k of value(a[m, k]) * value(b[j, k]) for rows m in
// [row_begin, row_end); a is [M, k], b is [n, k], acc is [M, n].
template <MatmulFormat F>
void matmul_codes_ref(
    const MatmulCode<F>* a,
    const MatmulCode<F>* b,
    MatmulAcc<F>* acc,
    int64_t n,
    int64_t k,
    int64_t row_begin,
    int64_t row_end);

// out[m, j] = dequantize_acc(acc[m * ld + j], ...) for rows m in [row_begin,
// row_end), out being [M, n]. Defined for Acc = int32_t and float, T = float
// and BFloat16.
template <typename Acc, typename T>
void dequantize_ref(
    const Acc* acc,
    int64_t ld,
    const Epilogue& epilogue,
    T* out,
    int64_t n,
    int64_t row_begin,
    int64_t row_end);

} // namespace qat::kernels
