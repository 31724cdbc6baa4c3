// Fast CPU kernels: bit-identical to fake_quant_ref.cpp, written as
// branch-free loops over one row with the row's parameters hoisted, which GCC
// -O3 vectorises (blends for the clamp, round_code's single rounding
// instruction or add/subtract trick instead of a libm call). This file is
// compiled once per instruction set (QAT_FAST_ISA = baseline, avx2, avx512;
// see CMakeLists.txt) and exports its kernels as one FastKernelTable. Threads
// come from the op layer. The block formats' kernels (NVFP4 / MX, GGUF) are in
// block_fast.cpp, built the same way, and join this table.
#include <algorithm>

#include "kernels/ref/block_fast_isa.h"
#include "kernels/ref/fast_kernel_table.h"

#ifndef QAT_FAST_ISA
#error "compile with -DQAT_FAST_ISA=<isa>"
#endif
#define QAT_CONCAT_(a, b) a##b
#define QAT_CONCAT(a, b) QAT_CONCAT_(a, b)

namespace qat::kernels {
namespace {

template <typename T>
void affine_row(
    const T* __restrict x,
    T* __restrict y,
    uint8_t* __restrict mask,
    int64_t n,
    float scale,
    float inv_scale,
    int32_t zero_point,
    int32_t qmin,
    int32_t qmax) {
  if (mask) {
    for (int64_t i = 0; i < n; ++i) {
      // Not const: GCC 12 then keeps r in registers and vectorises the loop
      // (a const struct local defeats its scalar replacement here).
      AffineQuantized r = fake_quant_affine(
          to_float(x[i]), scale, inv_scale, zero_point, qmin, qmax);
      y[i] = from_float<T>(r.value);
      mask[i] = r.in_range;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      y[i] = from_float<T>(
          fake_quant_affine(
              to_float(x[i]), scale, inv_scale, zero_point, qmin, qmax)
              .value);
    }
  }
}

template <Fp8Format F, typename T>
void fp8_row(
    const T* __restrict x,
    T* __restrict y,
    uint8_t* __restrict mask,
    int64_t n,
    float scale) {
  for (int64_t i = 0; i < n; ++i) {
    AffineQuantized r = fake_quant_fp8<F>(to_float(x[i]), scale);
    y[i] = from_float<T>(r.value);
    if (mask)
      mask[i] = r.in_range;
  }
}

template <typename T>
void affine_rows(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    int64_t row_begin,
    int64_t row_end) {
  const int64_t n = layout.row_len;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t p = layout.param_of_row(row);
    const int64_t offset = row * n;
    affine_row(
        x + offset,
        y + offset,
        mask ? mask + offset : nullptr,
        n,
        params.scale[p],
        1.0f / params.scale[p],
        params.zero_point[p],
        params.quant_min,
        params.quant_max);
  }
}

template <typename T>
void fp8_rows(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    int64_t row_begin,
    int64_t row_end) {
  const int64_t n = layout.row_len;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float s = scale[layout.param_of_row(row)];
    const int64_t offset = row * n;
    uint8_t* row_mask = mask ? mask + offset : nullptr;
    if (format == Fp8Format::e4m3fn) {
      fp8_row<Fp8Format::e4m3fn>(x + offset, y + offset, row_mask, n, s);
    } else {
      fp8_row<Fp8Format::e5m2>(x + offset, y + offset, row_mask, n, s);
    }
  }
}

template <typename T>
void mask_backward_elements(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t begin,
    int64_t end) {
  const T* __restrict in = dy;
  const uint8_t* __restrict keep = mask;
  T* __restrict out = dx;
  for (int64_t i = begin; i < end; ++i) {
    out[i] = from_float<T>(to_float(in[i]) * static_cast<float>(keep[i]));
  }
}

template <typename T>
void lsq_backward_rows(
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
  // Element gradients are computed in vectorised blocks; the double sums then
  // run in element order, as in the reference, so the row sums are
  // bit-identical too.
  constexpr int64_t kBlock = 256;
  float dscale_block[kBlock];
  float dzero_point_block[kBlock];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t p = layout.param_of_row(row);
    const float scale = params.scale[p];
    const float inv_scale = 1.0f / scale;
    double dscale = 0.0, dzero_point = 0.0;
    for (int64_t start = row * layout.row_len, stop = start + layout.row_len;
         start < stop;
         start += kBlock) {
      const int64_t n = std::min(kBlock, stop - start);
      const T* __restrict xs = x + start;
      const T* __restrict dys = dy + start;
      T* __restrict dxs = dx + start;
      for (int64_t i = 0; i < n; ++i) {
        LsqGrad g = lsq_grad(
            to_float(xs[i]),
            to_float(dys[i]),
            scale,
            inv_scale,
            params.zero_point[p],
            params.quant_min,
            params.quant_max,
            grad_factor);
        dxs[i] = from_float<T>(g.dx);
        dscale_block[i] = g.dscale;
        dzero_point_block[i] = g.dzero_point;
      }
      for (int64_t i = 0; i < n; ++i) {
        dscale += dscale_block[i];
        dzero_point += dzero_point_block[i];
      }
    }
    dscale_rows[row] = dscale;
    dzero_point_rows[row] = dzero_point;
  }
}

} // namespace

const FastKernelTable& QAT_CONCAT(fast_kernels_, QAT_FAST_ISA)() {
  static const FastKernelTable table{
      {affine_rows<float>,
       fp8_rows<float>,
       mask_backward_elements<float>,
       lsq_backward_rows<float>,
       fake_quant_gguf_isa<float>,
       fake_quant_gguf_fixed_isa<float>},
      {affine_rows<BFloat16>,
       fp8_rows<BFloat16>,
       mask_backward_elements<BFloat16>,
       lsq_backward_rows<BFloat16>,
       fake_quant_gguf_isa<BFloat16>,
       fake_quant_gguf_fixed_isa<BFloat16>},
      fake_quant_microscale_isa,
      microscale_amax_isa};
  return table;
}

} // namespace qat::kernels
