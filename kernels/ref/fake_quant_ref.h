// Torch-free CPU fake-quant kernels on raw pointers.
//
// Two versions of each kernel share one signature:
//   *_ref   the definition: one element at a time through quant_math.h,
//           written to be read;
//   *_fast  the same results bit for bit, written as plain row loops that GCC
//           vectorises, built for several instruction sets and chosen at run
//           time (see CpuIsa below).
// The op layer (ops/) checks inputs, allocates, and splits [0, rows) across
// threads.
#pragma once

#include <cstdint>

#include "kernels/quant_math.h"

namespace qat::kernels {

// A contiguous tensor seen as `rows` runs of `row_len` elements. Every element
// of row r uses quantization parameter number r % param_period:
//   per tensor         rows = numel / row_len, param_period = 1
//   per channel (a)    row_len = product of the sizes after axis a,
//                      param_period = size(a)
//   per group / token  (axis moved last) row_len = group size,
//                      param_period = rows
struct RowLayout {
  int64_t rows = 0;
  int64_t row_len = 0;
  int64_t param_period = 1;

  QAT_HOST_DEVICE int64_t numel() const {
    return rows * row_len;
  }
  QAT_HOST_DEVICE int64_t param_of_row(int64_t row) const {
    return row % param_period;
  }
};

// Integer affine parameters: one scale and zero point per parameter index, and
// the code range.
struct AffineParams {
  const float* scale = nullptr;
  const int32_t* zero_point = nullptr;
  int32_t quant_min = 0;
  int32_t quant_max = 0;
};

// Instruction sets the fast kernels are built for. The best one this CPU has is
// used, unless the environment variable QAT_CPU_ISA (baseline, avx2, avx512) or
// set_cpu_isa() asks for a lower one.
enum class CpuIsa { baseline, avx2, avx512 };
const char* cpu_isa_name(CpuIsa isa);
bool cpu_supports(
    CpuIsa isa); // built into this binary and supported by this CPU
CpuIsa active_cpu_isa();
void set_cpu_isa(
    CpuIsa isa); // throws std::invalid_argument when !cpu_supports(isa)

// Each kernel is defined for T = float and T = BFloat16 (explicit
// instantiations in the .cpp).

// Rows [row_begin, row_end) of y = fake_quant(x); mask[i] = 1 where x[i] was in
// range. mask may be null when no gradient will be needed.
template <typename T>
void fake_quant_affine_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    int64_t row_begin,
    int64_t row_end);
template <typename T>
void fake_quant_affine_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    int64_t row_begin,
    int64_t row_end);

// FP8 fake-quant of rows [row_begin, row_end) with one scale per parameter
// index.
template <typename T>
void fake_quant_fp8_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    int64_t row_begin,
    int64_t row_end);
template <typename T>
void fake_quant_fp8_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    int64_t row_begin,
    int64_t row_end);

// Straight-through backward over elements [begin, end): dx = dy * mask (as
// ATen's dY * mask, so a NaN gradient stays NaN even where the mask is zero).
template <typename T>
void mask_backward_ref(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t begin,
    int64_t end);
template <typename T>
void mask_backward_fast(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t begin,
    int64_t end);

// LSQ / LSQ+ backward over rows [row_begin, row_end), with the per-element
// rules of ATen's _fake_quantize_learnable_per_{tensor,channel}_affine_backward
// (derivation in qat/fake_quant.h). dx gets the masked gradient; dscale_rows[r]
// and dzero_point_rows[r] get the sums over row r of the scale and zero-point
// gradients, in double, so that the op layer reduces rows to parameters in a
// fixed order whatever the thread count.
template <typename T>
void lsq_backward_ref(
    const T* x,
    const T* dy,
    T* dx,
    double* dscale_rows,
    double* dzero_point_rows,
    const RowLayout& layout,
    const AffineParams& params,
    float grad_factor,
    int64_t row_begin,
    int64_t row_end);
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
    int64_t row_end);

// Explicit instantiations of one kernel family (ref or fast) for element type
// T, for the .cpp files that define them.
#define QAT_INSTANTIATE_CPU_KERNELS(KIND, T)           \
  template void fake_quant_affine_##KIND<T>(           \
      const T*,                                        \
      T*,                                              \
      uint8_t*,                                        \
      const RowLayout&,                                \
      const AffineParams&,                             \
      int64_t,                                         \
      int64_t);                                        \
  template void fake_quant_fp8_##KIND<T>(              \
      const T*,                                        \
      T*,                                              \
      uint8_t*,                                        \
      const RowLayout&,                                \
      const float*,                                    \
      Fp8Format,                                       \
      int64_t,                                         \
      int64_t);                                        \
  template void mask_backward_##KIND<T>(               \
      const T*, const uint8_t*, T*, int64_t, int64_t); \
  template void lsq_backward_##KIND<T>(                \
      const T*,                                        \
      const T*,                                        \
      T*,                                              \
      double*,                                         \
      double*,                                         \
      const RowLayout&,                                \
      const AffineParams&,                             \
      float,                                           \
      int64_t,                                         \
      int64_t);

} // namespace qat::kernels
