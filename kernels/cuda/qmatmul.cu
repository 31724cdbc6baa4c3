// The row quantizer and the dequantizing epilogue of the simulated matmuls.
// Both are memory-bound passes next to the GEMM, so they move 16 bytes of
// input per thread and step where the row length allows; every element goes
// through the quant_math.h formulas of the CPU reference (compiled with
// --fmad=false, so the results are the same bits).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qmatmul.cuh"

namespace qat::kernels::cuda {
namespace {

constexpr int kThreads = 256;
// A few waves of row blocks over an H100's 132 SMs; rows beyond loop.
constexpr int64_t kMaxRowBlocks = 132 * 8 * 4;
constexpr int64_t kMaxGridY = 65535;

// N consecutive elements moved with one load or store.
template <typename E, int N>
struct alignas(sizeof(E) * N) Vec {
  E v[N];
};

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// max_magnitude over the block, returned to every thread.
__device__ float block_max_magnitude(float m) {
  __shared__ float warp_max[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    m = max_magnitude(m, __shfl_xor_sync(0xffffffffu, m, offset));
  if (threadIdx.x % 32 == 0)
    warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w)
    m = max_magnitude(m, warp_max[w]);
  __syncthreads(); // warp_max is reused by the block's next row
  return m;
}

// One block per row (grid-stride over rows), V elements per thread and step: a
// dynamic row is read twice, the second time from L1/L2.
template <MatmulFormat F, typename T, int V>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(
    const T* __restrict__ x,
    int64_t rows,
    int64_t cols,
    RowScales scales,
    QuantizedRows<F> out) {
  using Codec = MatmulCodec<F>;
  using Code = MatmulCode<F>;
  const int64_t vecs = cols / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const auto* row = reinterpret_cast<const Vec<T, V>*>(x + r * cols);
    float scale;
    if (scales.given) {
      scale = scales.given[r * scales.stride];
    } else {
      float amax = 0.0f;
      for (int64_t i = threadIdx.x; i < vecs; i += kThreads) {
        const Vec<T, V> in = row[i];
#pragma unroll
        for (int j = 0; j < V; ++j)
          amax = max_magnitude(amax, to_float(in.v[j]));
      }
      scale = Codec::row_scale(block_max_magnitude(amax));
    }
    if (threadIdx.x == 0)
      out.scale[r] = scale;
    const float inv_scale = 1.0f / scale;
    auto* codes = reinterpret_cast<Vec<Code, V>*>(out.codes + r * cols);
    auto* mask = out.mask
        ? reinterpret_cast<Vec<uint8_t, V>*>(out.mask + r * cols)
        : nullptr;
    for (int64_t i = threadIdx.x; i < vecs; i += kThreads) {
      const Vec<T, V> in = row[i];
      Vec<Code, V> code;
      Vec<uint8_t, V> in_range;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const auto q = Codec::quantize(to_float(in.v[j]), scale, inv_scale);
        code.v[j] = q.code;
        in_range.v[j] = q.in_range;
      }
      codes[i] = code;
      if (mask)
        mask[i] = in_range;
    }
  }
}

// Rows along y (grid-stride), V columns per thread along x.
template <typename Acc, typename T, int V>
__global__ void dequantize_kernel(
    const Acc* __restrict__ acc,
    int64_t ld,
    Epilogue epilogue,
    T* __restrict__ out,
    int64_t rows,
    int64_t n) {
  const int64_t vecs = n / V;
  const auto* b_scale =
      reinterpret_cast<const Vec<float, V>*>(epilogue.b_scale);
  const auto* bias = reinterpret_cast<const Vec<float, V>*>(epilogue.bias);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float a_scale = epilogue.a_scale[r];
    const auto* in = reinterpret_cast<const Vec<Acc, V>*>(acc + r * ld);
    auto* dst = reinterpret_cast<Vec<T, V>*>(out + r * n);
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
         i < vecs;
         i += static_cast<int64_t>(gridDim.x) * kThreads) {
      const Vec<Acc, V> a = in[i];
      const Vec<float, V> s = b_scale[i];
      Vec<float, V> b{};
      if (bias)
        b = bias[i];
      Vec<T, V> y;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        y.v[j] = from_float<T>(dequantize_acc(
            static_cast<float>(a.v[j]), a_scale, s.v[j], b.v[j]));
      }
      dst[i] = y;
    }
  }
}

} // namespace

template <MatmulFormat F, typename T>
cudaError_t quantize_rows(
    const T* x,
    int64_t rows,
    int64_t cols,
    const RowScales& scales,
    const QuantizedRows<F>& out,
    cudaStream_t stream) {
  if (rows == 0)
    return cudaSuccess;
  constexpr int V = 16 / sizeof(T);
  const int blocks = static_cast<int>(std::min(rows, kMaxRowBlocks));
  // Every row start is aligned when the first is and cols is a multiple of V.
  if (cols % V == 0 && aligned(x, 16) && aligned(out.codes, V) &&
      (!out.mask || aligned(out.mask, V))) {
    quantize_rows_kernel<F, T, V>
        <<<blocks, kThreads, 0, stream>>>(x, rows, cols, scales, out);
  } else {
    quantize_rows_kernel<F, T, 1>
        <<<blocks, kThreads, 0, stream>>>(x, rows, cols, scales, out);
  }
  return cudaGetLastError();
}

template <typename Acc, typename T>
cudaError_t dequantize(
    const Acc* acc,
    int64_t ld,
    const Epilogue& epilogue,
    T* out,
    int64_t rows,
    int64_t n,
    cudaStream_t stream) {
  if (rows == 0 || n == 0)
    return cudaSuccess;
  constexpr int V = 4;
  const bool vectorised = n % V == 0 && ld % V == 0 && aligned(acc, 16) &&
      aligned(out, sizeof(T) * V) && aligned(epilogue.b_scale, 16) &&
      (!epilogue.bias || aligned(epilogue.bias, 16));
  const int64_t vecs = vectorised ? n / V : n;
  const dim3 grid(
      static_cast<unsigned>((vecs + kThreads - 1) / kThreads),
      static_cast<unsigned>(std::min(rows, kMaxGridY)));
  if (vectorised) {
    dequantize_kernel<Acc, T, V>
        <<<grid, kThreads, 0, stream>>>(acc, ld, epilogue, out, rows, n);
  } else {
    dequantize_kernel<Acc, T, 1>
        <<<grid, kThreads, 0, stream>>>(acc, ld, epilogue, out, rows, n);
  }
  return cudaGetLastError();
}

#define QAT_INSTANTIATE_ROWS(F, T)          \
  template cudaError_t quantize_rows<F, T>( \
      const T*,                             \
      int64_t,                              \
      int64_t,                              \
      const RowScales&,                     \
      const QuantizedRows<F>&,              \
      cudaStream_t);
#define QAT_INSTANTIATE_EPILOGUE(Acc, T)   \
  template cudaError_t dequantize<Acc, T>( \
      const Acc*,                          \
      int64_t,                             \
      const Epilogue&,                     \
      T*,                                  \
      int64_t,                             \
      int64_t,                             \
      cudaStream_t);
QAT_INSTANTIATE_ROWS(MatmulFormat::int8, float)
QAT_INSTANTIATE_ROWS(MatmulFormat::int8, BFloat16)
QAT_INSTANTIATE_ROWS(MatmulFormat::e4m3fn, float)
QAT_INSTANTIATE_ROWS(MatmulFormat::e4m3fn, BFloat16)
QAT_INSTANTIATE_EPILOGUE(int32_t, float)
QAT_INSTANTIATE_EPILOGUE(int32_t, BFloat16)
QAT_INSTANTIATE_EPILOGUE(float, float)
QAT_INSTANTIATE_EPILOGUE(float, BFloat16)
#undef QAT_INSTANTIATE_EPILOGUE
#undef QAT_INSTANTIATE_ROWS

} // namespace qat::kernels::cuda
