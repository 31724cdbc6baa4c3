#include "kernels/ref/qmatmul_ref.h"

namespace qat::kernels {

template <MatmulFormat F, typename T>
void quantize_rows_ref(
    const T* x,
    int64_t cols,
    const RowScales& scales,
    const QuantizedRows<F>& out,
    int64_t row_begin,
    int64_t row_end) {
  using Codec = MatmulCodec<F>;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* row = x + r * cols;
    float scale;
    if (scales.given) {
      scale = scales.given[r * scales.stride];
    } else {
      float amax = 0.0f;
      for (int64_t c = 0; c < cols; ++c)
        amax = max_magnitude(amax, to_float(row[c]));
      scale = Codec::row_scale(amax);
    }
    out.scale[r] = scale;
    const float inv_scale = 1.0f / scale;
    for (int64_t c = 0; c < cols; ++c) {
      const auto q = Codec::quantize(to_float(row[c]), scale, inv_scale);
      out.codes[r * cols + c] = q.code;
      if (out.mask)
        out.mask[r * cols + c] = q.in_range;
    }
  }
}

template <MatmulFormat F>
void matmul_codes_ref(
    const MatmulCode<F>* a,
    const MatmulCode<F>* b,
    MatmulAcc<F>* acc,
    int64_t n,
    int64_t k,
    int64_t row_begin,
    int64_t row_end) {
  using Codec = MatmulCodec<F>;
  using Acc = MatmulAcc<F>;
  for (int64_t m = row_begin; m < row_end; ++m) {
    for (int64_t j = 0; j < n; ++j) {
      Acc sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        // int8: int32 products; e4m3fn: exact float products.
        sum += static_cast<Acc>(Codec::value(a[m * k + i])) *
            static_cast<Acc>(Codec::value(b[j * k + i]));
      }
      acc[m * n + j] = sum;
    }
  }
}

template <typename Acc, typename T>
void dequantize_ref(
    const Acc* acc,
    int64_t ld,
    const Epilogue& epilogue,
    T* out,
    int64_t n,
    int64_t row_begin,
    int64_t row_end) {
  for (int64_t m = row_begin; m < row_end; ++m) {
    for (int64_t j = 0; j < n; ++j) {
      out[m * n + j] = from_float<T>(dequantize_acc(
          static_cast<float>(acc[m * ld + j]),
          epilogue.a_scale[m],
          epilogue.b_scale[j],
          epilogue.bias ? epilogue.bias[j] : 0.0f));
    }
  }
}

#define QAT_INSTANTIATE_ROWS(F, T)       \
  template void quantize_rows_ref<F, T>( \
      const T*,                          \
      int64_t,                           \
      const RowScales&,                  \
      const QuantizedRows<F>&,           \
      int64_t,                           \
      int64_t);
#define QAT_INSTANTIATE_FORMAT(F)                       \
  QAT_INSTANTIATE_ROWS(F, float)                        \
  QAT_INSTANTIATE_ROWS(F, BFloat16)                     \
  template void matmul_codes_ref<F>(                    \
      const MatmulCode<F>*,                             \
      const MatmulCode<F>*,                             \
      MatmulAcc<F>*,                                    \
      int64_t,                                          \
      int64_t,                                          \
      int64_t,                                          \
      int64_t);                                         \
  template void dequantize_ref<MatmulAcc<F>, float>(    \
      const MatmulAcc<F>*,                              \
      int64_t,                                          \
      const Epilogue&,                                  \
      float*,                                           \
      int64_t,                                          \
      int64_t,                                          \
      int64_t);                                         \
  template void dequantize_ref<MatmulAcc<F>, BFloat16>( \
      const MatmulAcc<F>*,                              \
      int64_t,                                          \
      const Epilogue&,                                  \
      BFloat16*,                                        \
      int64_t,                                          \
      int64_t,                                          \
      int64_t);
QAT_INSTANTIATE_FORMAT(MatmulFormat::int8)
QAT_INSTANTIATE_FORMAT(MatmulFormat::e4m3fn)
#undef QAT_INSTANTIATE_FORMAT
#undef QAT_INSTANTIATE_ROWS

} // namespace qat::kernels
