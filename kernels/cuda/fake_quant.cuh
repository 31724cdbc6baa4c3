// CUDA fake-quant kernels: the same row layout, formulas and results as the CPU
// kernels in kernels/ref (which define the right answer). Torch-free launchers
// on raw device pointers; the op layer (ops/cuda_impl.cpp) checks, allocates
// and passes the current stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ref/fake_quant_ref.h"
#include "kernels/ref/gguf_ref.h"

namespace qat::kernels::cuda {

// Each launcher is defined for T = float and T = BFloat16 and returns the
// launch status.

// y = fake_quant(x) over the whole layout; mask (may be null) = 1 where x was
// in range.
template <typename T>
cudaError_t fake_quant_affine(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    cudaStream_t stream);

template <typename T>
cudaError_t fake_quant_fp8(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    cudaStream_t stream);

// GGUF Q8_0 / Q4_0 fake-quant of `blocks` blocks of 32 consecutive elements.
template <typename T>
cudaError_t fake_quant_gguf(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t blocks,
    cudaStream_t stream);

// dx = dy * mask over n elements.
template <typename T>
cudaError_t mask_backward(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t n,
    cudaStream_t stream);

// LSQ backward: dx, and per-row sums of the scale and zero-point gradients
// (layout.rows doubles each), reduced to parameters by the op layer.
template <typename T>
cudaError_t lsq_backward(
    const T* x,
    const T* dy,
    T* dx,
    double* dscale_rows,
    double* dzero_point_rows,
    const RowLayout& layout,
    const AffineParams& params,
    float grad_factor,
    cudaStream_t stream);

} // namespace qat::kernels::cuda
