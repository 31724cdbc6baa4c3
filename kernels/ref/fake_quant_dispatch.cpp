// Run-time choice of the fast kernels' instruction set, and the public *_fast
// entry points.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/ref/fast_kernel_table.h"

namespace qat::kernels {
namespace {

CpuIsa best_supported() {
  if (cpu_supports(CpuIsa::avx512))
    return CpuIsa::avx512;
  if (cpu_supports(CpuIsa::avx2))
    return CpuIsa::avx2;
  return CpuIsa::baseline;
}

// QAT_CPU_ISA lowers the choice (to test or compare the builds); it never
// raises it past what the CPU runs.
CpuIsa initial_isa() {
  const CpuIsa best = best_supported();
  const char* requested = std::getenv("QAT_CPU_ISA");
  if (!requested)
    return best;
  for (CpuIsa isa : {CpuIsa::baseline, CpuIsa::avx2, CpuIsa::avx512}) {
    if (std::string(requested) == cpu_isa_name(isa))
      return cpu_supports(isa) ? isa : best;
  }
  throw std::invalid_argument(
      std::string("QAT_CPU_ISA=") + requested +
      ": expected baseline, avx2 or avx512");
}

std::atomic<CpuIsa>& active() {
  static std::atomic<CpuIsa> isa{initial_isa()};
  return isa;
}

const FastKernelTable& table() {
  switch (active().load(std::memory_order_relaxed)) {
#if defined(QAT_KERNELS_X86_ISAS)
    case CpuIsa::avx512:
      return fast_kernels_avx512();
    case CpuIsa::avx2:
      return fast_kernels_avx2();
#endif
    default:
      return fast_kernels_baseline();
  }
}

} // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::baseline:
      return "baseline";
    case CpuIsa::avx2:
      return "avx2";
    case CpuIsa::avx512:
      return "avx512";
  }
  return "?";
}

bool cpu_supports(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::baseline:
      return true;
#if defined(QAT_KERNELS_X86_ISAS)
    // The builds use -march=x86-64-v3 and -march=x86-64-v4: check their main
    // features.
    case CpuIsa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("bmi2");
    case CpuIsa::avx512:
      return cpu_supports(CpuIsa::avx2) && __builtin_cpu_supports("avx512f") &&
          __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

CpuIsa active_cpu_isa() {
  return active().load();
}

void set_cpu_isa(CpuIsa isa) {
  if (!cpu_supports(isa)) {
    throw std::invalid_argument(
        std::string("set_cpu_isa: this CPU or build has no ") +
        cpu_isa_name(isa));
  }
  active().store(isa);
}

template <typename T>
void fake_quant_affine_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    int64_t row_begin,
    int64_t row_end) {
  table().get<T>().affine(x, y, mask, layout, params, row_begin, row_end);
}

template <typename T>
void fake_quant_fp8_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    int64_t row_begin,
    int64_t row_end) {
  table().get<T>().fp8(x, y, mask, layout, scale, format, row_begin, row_end);
}

template <typename T>
void mask_backward_fast(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t begin,
    int64_t end) {
  table().get<T>().mask_backward(dy, mask, dx, begin, end);
}

template <typename T>
void lsq_backward_fast(
    const T* x,
    const T* dy,
    T* dx,
    double* dscale_rows,
    double* dzero_point_rows,
    const RowLayout& layout,
    const AffineParams& params,
    float grad_factor,
    int64_t row_begin,
    int64_t row_end) {
  table().get<T>().lsq_backward(
      x,
      dy,
      dx,
      dscale_rows,
      dzero_point_rows,
      layout,
      params,
      grad_factor,
      row_begin,
      row_end);
}

float microscale_amax_fast(const float* x, int64_t n) {
  return table().microscale_amax(x, n);
}

void fake_quant_microscale_fast(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* scale_codes_out) {
  table().microscale(
      x,
      y,
      mask,
      rows,
      cols,
      format,
      scale_codes,
      global_scale,
      scale_codes_out);
}

template <typename T>
void fake_quant_gguf_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end) {
  // The K-quants' search is not vectorised: the reference's.
  if (gguf_is_kquant(type)) {
    fake_quant_gguf_ref(x, y, mask, type, block_begin, block_end);
    return;
  }
  table().get<T>().gguf(
      x, y, mask, static_cast<int>(type), block_begin, block_end);
}

template <typename T>
void fake_quant_gguf_fixed_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end) {
  table().get<T>().gguf_fixed(
      x,
      y,
      mask,
      representations,
      static_cast<int>(type),
      block_begin,
      block_end);
}

template void fake_quant_gguf_fast<float>(
    const float*,
    float*,
    uint8_t*,
    GgufType,
    int64_t,
    int64_t);
template void fake_quant_gguf_fast<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    GgufType,
    int64_t,
    int64_t);
template void fake_quant_gguf_fixed_fast<float>(
    const float*,
    float*,
    uint8_t*,
    const uint8_t*,
    GgufType,
    int64_t,
    int64_t);
template void fake_quant_gguf_fixed_fast<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    const uint8_t*,
    GgufType,
    int64_t,
    int64_t);

QAT_INSTANTIATE_CPU_KERNELS(fast, float)
QAT_INSTANTIATE_CPU_KERNELS(fast, BFloat16)

} // namespace qat::kernels
