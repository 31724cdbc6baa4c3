// Reference CPU kernels: the definition of every fake-quant result. One element
// at a time, straight through the scalar formulas of quant_math.h; the fast
// kernels must match these bit for bit (tests/test_kernels.cpp).
#include "kernels/ref/fake_quant_ref.h"

namespace qat::kernels {

template <typename T>
void fake_quant_affine_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const AffineParams& params,
    int64_t row_begin,
    int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t p = layout.param_of_row(row);
    const float scale = params.scale[p];
    const float inv_scale = 1.0f / scale;
    for (int64_t i = row * layout.row_len; i < (row + 1) * layout.row_len;
         ++i) {
      const AffineQuantized r = fake_quant_affine(
          to_float(x[i]),
          scale,
          inv_scale,
          params.zero_point[p],
          params.quant_min,
          params.quant_max);
      y[i] = from_float<T>(r.value);
      if (mask)
        mask[i] = r.in_range;
    }
  }
}

template <typename T>
void fake_quant_fp8_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const RowLayout& layout,
    const float* scale,
    Fp8Format format,
    int64_t row_begin,
    int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const float s = scale[layout.param_of_row(row)];
    for (int64_t i = row * layout.row_len; i < (row + 1) * layout.row_len;
         ++i) {
      const AffineQuantized r = format == Fp8Format::e4m3fn
          ? fake_quant_fp8<Fp8Format::e4m3fn>(to_float(x[i]), s)
          : fake_quant_fp8<Fp8Format::e5m2>(to_float(x[i]), s);
      y[i] = from_float<T>(r.value);
      if (mask)
        mask[i] = r.in_range;
    }
  }
}

template <typename T>
void mask_backward_ref(
    const T* dy,
    const uint8_t* mask,
    T* dx,
    int64_t begin,
    int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    dx[i] = from_float<T>(to_float(dy[i]) * static_cast<float>(mask[i]));
  }
}

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
    int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t p = layout.param_of_row(row);
    const float scale = params.scale[p];
    const float inv_scale = 1.0f / scale;
    double dscale = 0.0, dzero_point = 0.0;
    for (int64_t i = row * layout.row_len; i < (row + 1) * layout.row_len;
         ++i) {
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
    dscale_rows[row] = dscale;
    dzero_point_rows[row] = dzero_point;
  }
}

QAT_INSTANTIATE_CPU_KERNELS(ref, float)
QAT_INSTANTIATE_CPU_KERNELS(ref, BFloat16)

} // namespace qat::kernels
