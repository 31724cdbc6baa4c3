// CUDA kernels of the simulated matmuls around the tensor-core GEMM: the row
// quantizer and the dequantizing epilogue, with the formulas and results of
// kernels/ref/qmatmul_ref.h (bit for bit). Torch-free launchers on raw device
// pointers; ops/cuda_impl_qmatmul.cpp checks, allocates, runs the GEMM itself
// (cuBLASLt through ATen) and passes the current stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ref/qmatmul_ref.h"

namespace qat::kernels::cuda {

// quantize_rows_ref over all `rows` rows of x ([rows, cols], row-major).
// Defined for T = float and BFloat16.
template <MatmulFormat F, typename T>
cudaError_t quantize_rows(
    const T* x,
    int64_t rows,
    int64_t cols,
    const RowScales& scales,
    const QuantizedRows<F>& out,
    cudaStream_t stream);

// dequantize_ref over all `rows` rows: out ([rows, n]) from acc (leading
// dimension ld >= n). Defined for Acc = int32_t and float, T = float and
// BFloat16.
template <typename Acc, typename T>
cudaError_t dequantize(
    const Acc* acc,
    int64_t ld,
    const Epilogue& epilogue,
    T* out,
    int64_t rows,
    int64_t n,
    cudaStream_t stream);

} // namespace qat::kernels::cuda
