// CUDA fake-quant kernels. Every element goes through the same quant_math.h
// functions as the CPU reference (compiled with --fmad=false, so no FMA
// contraction changes a bit); only the loop structure is the GPU's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

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

// 16 bytes of T, moved with one load or store instruction; Bytes<N> is the
// matching run of mask bytes.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <int N>
struct alignas(N) Bytes {
  uint8_t v[N];
};

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Where rows, positions and parameter counts all fit 32 bits (nearly every
// tensor), index arithmetic divides in 32 bits: a 64-bit integer division is a
// long instruction sequence on the GPU.
struct Indexer {
  int64_t unit_len; // elements (or packs) per row
  int64_t param_period;
  bool narrow;

  Indexer(const RowLayout& layout, int64_t per_unit)
      : unit_len(layout.row_len / per_unit),
        param_period(layout.param_period),
        narrow(layout.numel() <= UINT32_MAX) {}

  // Parameter index of element (or pack) i. Per tensor needs no division, and
  // per group, per token or per channel along the first axis (period = rows)
  // no remainder.
  __device__ __forceinline__ int64_t param_of(int64_t i) const {
    if (param_period == 1)
      return 0;
    const int64_t row = narrow
        ? static_cast<int64_t>(
              static_cast<uint32_t>(i) / static_cast<uint32_t>(unit_len))
        : i / unit_len;
    if (row < param_period)
      return row;
    return narrow
        ? static_cast<int64_t>(
              static_cast<uint32_t>(row) % static_cast<uint32_t>(param_period))
        : row % param_period;
  }
};

// The per-row quantizers: row(p) reads parameter p once, the result
// fake-quantizes each element of that row.
struct AffineRow {
  float scale, inv_scale;
  int32_t zero_point, quant_min, quant_max;
  __device__ __forceinline__ AffineQuantized operator()(float x) const {
    return kernels::fake_quant_affine(
        x, scale, inv_scale, zero_point, quant_min, quant_max);
  }
};

struct AffineOp {
  AffineParams params;
  __device__ __forceinline__ AffineRow row(int64_t p) const {
    const float scale = params.scale[p];
    return {
        scale,
        1.0f / scale,
        params.zero_point[p],
        params.quant_min,
        params.quant_max};
  }
};

template <Fp8Format F>
struct Fp8Row {
  float scale;
  __device__ __forceinline__ AffineQuantized operator()(float x) const {
    return kernels::fake_quant_fp8<F>(x, scale);
  }
};

template <Fp8Format F>
struct Fp8Op {
  const float* scale;
  __device__ __forceinline__ Fp8Row<F> row(int64_t p) const {
    return {scale[p]};
  }
};

// One element per step: any row length, any alignment.
template <typename T, typename Op>
__global__ void rows_kernel(
    const T* __restrict__ x,
    T* __restrict__ y,
    uint8_t* __restrict__ mask,
    int64_t n,
    Indexer index,
    Op op) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const AffineQuantized r = op.row(index.param_of(i))(to_float(x[i]));
    y[i] = from_float<T>(r.value);
    if (mask) {
      mask[i] = r.in_range;
    }
  }
}

// One 16-byte pack per step, all of it inside one row (the row length is a
// multiple of the pack): a 16-byte load, a 16-byte store and one store of the
// mask bytes per thread keep the memory system busy where element-wise
// accesses of 2 or 4 bytes do not.
template <typename T, typename Op>
__global__ void rows_pack_kernel(
    const Pack<T>* __restrict__ x,
    Pack<T>* __restrict__ y,
    Bytes<Pack<T>::kSize>* __restrict__ mask,
    int64_t packs,
    Indexer index,
    Op op) {
  constexpr int kSize = Pack<T>::kSize;
  for (int64_t k = global_thread(); k < packs; k += grid_threads()) {
    const auto quantize = op.row(index.param_of(k));
    const Pack<T> in = x[k];
    Pack<T> out;
    Bytes<kSize> in_range;
#pragma unroll
    for (int j = 0; j < kSize; ++j) {
      const AffineQuantized r = quantize(to_float(in.v[j]));
      out.v[j] = from_float<T>(r.value);
      in_range.v[j] = r.in_range;
    }
    y[k] = out;
    if (mask) {
      mask[k] = in_range;
    }
  }
}

template <typename T, typename Op>
cudaError_t launch_rows(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const Op& op,
    cudaStream_t stream) {
  const int64_t n = layout.numel();
  if (n == 0) {
    return cudaSuccess;
  }
  constexpr int kSize = Pack<T>::kSize;
  if (layout.row_len % kSize == 0 && aligned16(x) && aligned16(y) &&
      (!mask || aligned16(mask))) {
    const int64_t packs = n / kSize;
    rows_pack_kernel<T, Op><<<blocks_for(packs), kThreads, 0, stream>>>(
        reinterpret_cast<const Pack<T>*>(x),
        reinterpret_cast<Pack<T>*>(y),
        reinterpret_cast<Bytes<kSize>*>(mask),
        packs,
        Indexer(layout, kSize),
        op);
  } else {
    rows_kernel<T, Op><<<blocks_for(n), kThreads, 0, stream>>>(
        x, y, mask, n, Indexer(layout, 1), op);
  }
  return cudaGetLastError();
}

// dx = dy * mask: whole packs first (when aligned), then the tail element by
// element.
template <typename T>
__global__ void mask_backward_kernel(
    const T* __restrict__ dy,
    const uint8_t* __restrict__ mask,
    T* __restrict__ dx,
    int64_t n,
    int64_t packs) {
  constexpr int kSize = Pack<T>::kSize;
  const auto* dy_packs = reinterpret_cast<const Pack<T>*>(dy);
  const auto* mask_packs = reinterpret_cast<const Bytes<kSize>*>(mask);
  auto* dx_packs = reinterpret_cast<Pack<T>*>(dx);
  for (int64_t k = global_thread(); k < packs; k += grid_threads()) {
    const Pack<T> g = dy_packs[k];
    const Bytes<kSize> keep = mask_packs[k];
    Pack<T> out;
#pragma unroll
    for (int j = 0; j < kSize; ++j) {
      out.v[j] =
          from_float<T>(to_float(g.v[j]) * static_cast<float>(keep.v[j]));
    }
    dx_packs[k] = out;
  }
  for (int64_t i = packs * kSize + global_thread(); i < n;
       i += grid_threads()) {
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

} // namespace

template <typename T>
cudaError_t fake_quant_affine(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    cudaStream_t stream) {
  return launch_rows(x, y, mask, layout, AffineOp{params}, stream);
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
  if (format == Fp8Format::e4m3fn) {
    return launch_rows(
        x, y, mask, layout, Fp8Op<Fp8Format::e4m3fn>{scale}, stream);
  }
  return launch_rows(x, y, mask, layout, Fp8Op<Fp8Format::e5m2>{scale}, stream);
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
  const int64_t packs = aligned16(dy) && aligned16(mask) && aligned16(dx)
      ? n / Pack<T>::kSize
      : 0;
  mask_backward_kernel<T>
      <<<blocks_for(packs > 0 ? packs : n), kThreads, 0, stream>>>(
          dy, mask, dx, n, packs);
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
