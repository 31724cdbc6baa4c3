#include "kernels/cuda/microscale.cuh"

#include <algorithm>

namespace qat::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 65535;

int grid_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxGrid)));
}

// Magnitudes as unsigned bits order as the floats do, and NaN bits above
// infinity, so an integer maximum is max_magnitude's maximum.
__global__ void amax_kernel(const float* x, int64_t n, uint32_t* amax_bits) {
  float m = 0.0f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    m = max_magnitude(m, x[i]);
  atomicMax(amax_bits, float_bits(m));
}

// One thread per block of 16 or 32 values: its amax, its scale code, then
// each value (the reference's loops, in the same float operations).
__global__ void microscale_kernel(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t blocks,
    MicroscaleFormat format,
    float global_scale) {
  const int block = microscale_block_size(format);
  for (int64_t b = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; b < blocks;
       b += int64_t{gridDim.x} * blockDim.x) {
    const float* in = x + b * block;
    float amax = 0.0f;
    for (int i = 0; i < block; ++i)
      amax = max_magnitude(amax, in[i]);
    const float scale = microscale_scale_value(
        format,
        microscale_scale_code(format, amax, global_scale),
        global_scale);
    for (int i = 0; i < block; ++i) {
      const AffineQuantized q = microscale_fake_quant(format, in[i], scale);
      y[b * block + i] = q.value;
      if (mask)
        mask[b * block + i] = q.in_range ? 1 : 0;
    }
  }
}

} // namespace

cudaError_t microscale_amax_bits(
    const float* x,
    int64_t n,
    uint32_t* amax_bits,
    cudaStream_t stream) {
  const cudaError_t status =
      cudaMemsetAsync(amax_bits, 0, sizeof(uint32_t), stream);
  if (status != cudaSuccess || n == 0)
    return status;
  amax_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, amax_bits);
  return cudaGetLastError();
}

cudaError_t fake_quant_microscale(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t blocks,
    MicroscaleFormat format,
    float global_scale,
    cudaStream_t stream) {
  if (blocks == 0)
    return cudaSuccess;
  microscale_kernel<<<grid_for(blocks), kThreads, 0, stream>>>(
      x, y, mask, blocks, format, global_scale);
  return cudaGetLastError();
}

} // namespace qat::kernels::cuda
