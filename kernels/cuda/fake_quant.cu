// CUDA fake-quant kernels. Every element goes through the same quant_math.h
// functions as the CPU reference (compiled with --fmad=false, so no FMA
// contraction changes a bit); only the loop structure is the GPU's.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/fake_quant.cuh"

namespace qat::kernels::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill an H100 (132 SMs x 16 blocks of 256 threads) several
// times; grid-stride loops cover any size beyond.
constexpr int64_t kMaxBlocks = 132 * 16 * 4;

int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

template <typename T>
__global__ void affine_kernel(
    const T* __restrict__ x,
    T* __restrict__ y,
    uint8_t* __restrict__ mask,
    RowLayout layout,
    AffineParams params) {
  const int64_t n = layout.numel();
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t p = layout.param_of_row(i / layout.row_len);
    const float scale = params.scale[p];
    const AffineQuantized r = kernels::fake_quant_affine(
        to_float(x[i]),
        scale,
        1.0f / scale,
        params.zero_point[p],
        params.quant_min,
        params.quant_max);
    y[i] = from_float<T>(r.value);
    if (mask) {
      mask[i] = r.in_range;
    }
  }
}

template <typename T, Fp8Format F>
__global__ void fp8_kernel(
    const T* __restrict__ x,
    T* __restrict__ y,
    uint8_t* __restrict__ mask,
    RowLayout layout,
    const float* __restrict__ scale) {
  const int64_t n = layout.numel();
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float s = scale[layout.param_of_row(i / layout.row_len)];
    const AffineQuantized r = kernels::fake_quant_fp8<F>(to_float(x[i]), s);
    y[i] = from_float<T>(r.value);
    if (mask) {
      mask[i] = r.in_range;
    }
  }
}

template <typename T>
__global__ void mask_backward_kernel(
    const T* __restrict__ dy,
    const uint8_t* __restrict__ mask,
    T* __restrict__ dx,
    int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    dx[i] = from_float<T>(to_float(dy[i]) * static_cast<float>(mask[i]));
  }
}

// Sum of a double over the block; the result is valid in thread 0.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_sums[warp] = value;
  }
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  __syncthreads(); // warp_sums is reused by the next row
  return value;
}

// One block per row (grid-stride over rows): dx per element, the row's scale
// and zero-point gradient sums by a block reduction.
template <typename T>
__global__ void lsq_backward_kernel(
    const T* __restrict__ x,
    const T* __restrict__ dy,
    T* __restrict__ dx,
    double* __restrict__ dscale_rows,
    double* __restrict__ dzero_point_rows,
    RowLayout layout,
    AffineParams params,
    float grad_factor) {
  for (int64_t row = blockIdx.x; row < layout.rows; row += gridDim.x) {
    const int64_t p = layout.param_of_row(row);
    const float scale = params.scale[p];
    const float inv_scale = 1.0f / scale;
    double dscale = 0.0, dzero_point = 0.0;
    const int64_t begin = row * layout.row_len;
    for (int64_t i = begin + threadIdx.x; i < begin + layout.row_len;
         i += blockDim.x) {
      const LsqGrad g = lsq_grad(
          to_float(x[i]),
          to_float(dy[i]),
          scale,
          inv_scale,
          params.zero_point[p],
          params.quant_min,
          params.quant_max,
          grad_factor);
      dx[i] = from_float<T>(g.dx);
      dscale += g.dscale;
      dzero_point += g.dzero_point;
    }
    dscale = block_sum(dscale);
    dzero_point = block_sum(dzero_point);
    if (threadIdx.x == 0) {
      dscale_rows[row] = dscale;
      dzero_point_rows[row] = dzero_point;
    }
  }
}

} // namespace

template <typename T>
cudaError_t fake_quant_affine(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    cudaStream_t stream) {
  if (layout.numel() == 0) {
    return cudaSuccess;
  }
  affine_kernel<T><<<blocks_for(layout.numel()), kThreads, 0, stream>>>(
      x, y, mask, layout, params);
  return cudaGetLastError();
}

template <typename T>
cudaError_t fake_quant_fp8(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    cudaStream_t stream) {
  if (layout.numel() == 0) {
    return cudaSuccess;
  }
  const int blocks = blocks_for(layout.numel());
  if (format == Fp8Format::e4m3fn) {
    fp8_kernel<T, Fp8Format::e4m3fn>
        <<<blocks, kThreads, 0, stream>>>(x, y, mask, layout, scale);
  } else {
    fp8_kernel<T, Fp8Format::e5m2>
        <<<blocks, kThreads, 0, stream>>>(x, y, mask, layout, scale);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t mask_backward(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t n,
    cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  mask_backward_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(dy, mask, dx, n);
  return cudaGetLastError();
}

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
    cudaStream_t stream) {
  if (layout.rows == 0) {
    return cudaSuccess;
  }
  const int blocks =
      static_cast<int>(std::min<int64_t>(layout.rows, kMaxBlocks));
  lsq_backward_kernel<T><<<blocks, kThreads, 0, stream>>>(
      x, dy, dx, dscale_rows, dzero_point_rows, layout, params, grad_factor);
  return cudaGetLastError();
}

// One thread per GGUF block of 32: the block's scale needs all of it.
template <typename T>
__global__ void gguf_kernel(
    const T* __restrict__ x,
    T* __restrict__ y,
    uint8_t* __restrict__ mask,
    GgufType type,
    int64_t blocks) {
  for (int64_t b = global_thread(); b < blocks; b += grid_threads()) {
    const int64_t at = b * kGgufBlockSize;
    gguf_fake_quant_block(type, x + at, y + at, mask ? mask + at : nullptr);
  }
}

template <typename T>
cudaError_t fake_quant_gguf(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t blocks,
    cudaStream_t stream) {
  if (blocks == 0) {
    return cudaSuccess;
  }
  gguf_kernel<T>
      <<<blocks_for(blocks), kThreads, 0, stream>>>(x, y, mask, type, blocks);
  return cudaGetLastError();
}

#define QAT_INSTANTIATE(T)                                      \
  template cudaError_t fake_quant_gguf<T>(                      \
      const T*, T*, uint8_t*, GgufType, int64_t, cudaStream_t); \
  template cudaError_t fake_quant_affine<T>(                    \
      const T*,                                                 \
      T*,                                                       \
      uint8_t*,                                                 \
      const RowLayout&,                                         \
      const AffineParams&,                                      \
      cudaStream_t);                                            \
  template cudaError_t fake_quant_fp8<T>(                       \
      const T*,                                                 \
      T*,                                                       \
      uint8_t*,                                                 \
      const RowLayout&,                                         \
      const float*,                                             \
      Fp8Format,                                                \
      cudaStream_t);                                            \
  template cudaError_t mask_backward<T>(                        \
      const T*, const uint8_t*, T*, int64_t, cudaStream_t);     \
  template cudaError_t lsq_backward<T>(                         \
      const T*,                                                 \
      const T*,                                                 \
      T*,                                                       \
      double*,                                                  \
      double*,                                                  \
      const RowLayout&,                                         \
      const AffineParams&,                                      \
      float,                                                    \
      cudaStream_t);
QAT_INSTANTIATE(float)
QAT_INSTANTIATE(BFloat16)
#undef QAT_INSTANTIATE

} // namespace qat::kernels::cuda
