// CPU implementations: the shared op bodies of ops/fake_quant_impl.h with the
// fast Torch-free kernels, split into row ranges on ATen's thread pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels/ref/block_fast.h"
#include "kernels/ref/fake_quant_ref.h"
#include "kernels/ref/gguf_ref.h"
#include "ops/fake_quant_impl.h"

namespace qat::ops {
namespace {

using kernels::AffineParams;
using kernels::RowLayout;

// Splits [0, rows) into tasks of at least ~32K elements.
template <typename Body>
void parallel_rows(const RowLayout& layout, const Body& body) {
  constexpr int64_t kMinElementsPerTask = 1 << 15;
  const int64_t grain = std::max<int64_t>(
      1, kMinElementsPerTask / std::max<int64_t>(1, layout.row_len));
  at::parallel_for(0, layout.rows, grain, body);
}

struct Cpu {
  static constexpr bool kCheckValues = true;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  template <typename T>
  static void affine(
      const T* x,
      T* y,
      uint8_t* mask,
      const RowLayout& layout,
      const AffineParams& params) {
    parallel_rows(layout, [&](int64_t begin, int64_t end) {
      kernels::fake_quant_affine_fast(x, y, mask, layout, params, begin, end);
    });
  }

  template <typename T>
  static void fp8(
      const T* x,
      T* y,
      uint8_t* mask,
      const RowLayout& layout,
      const float* scale,
      kernels::Fp8Format format) {
    parallel_rows(layout, [&](int64_t begin, int64_t end) {
      kernels::fake_quant_fp8_fast(
          x, y, mask, layout, scale, format, begin, end);
    });
  }

  template <typename T>
  static void gguf(
      const T* x,
      T* y,
      uint8_t* mask,
      kernels::GgufType type,
      int64_t blocks) {
    at::parallel_for(0, blocks, 1 << 10, [&](int64_t begin, int64_t end) {
      kernels::fake_quant_gguf_fast(x, y, mask, type, begin, end);
    });
  }

  static void gguf_search(
      const float* x,
      uint8_t* representations,
      kernels::GgufType type,
      int64_t n) {
    const auto& info = kernels::gguf_type_info(type);
    at::parallel_for(
        0, n / info.block_size, 64, [&](int64_t begin, int64_t end) {
          kernels::gguf_search_ref(
              x + begin * info.block_size,
              (end - begin) * info.block_size,
              type,
              representations + begin * info.representation_bytes);
        });
  }

  template <typename T>
  static void gguf_fixed(
      const T* x,
      T* y,
      uint8_t* mask,
      const uint8_t* representations,
      kernels::GgufType type,
      int64_t blocks) {
    at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
      kernels::fake_quant_gguf_fixed_fast(
          x, y, mask, representations, type, begin, end);
    });
  }

  static void gguf_representation_grad(
      const float* x,
      const float* dy,
      const uint8_t* representations,
      kernels::GgufType type,
      int64_t blocks,
      float* grad_d,
      float* grad_dmin) {
    at::parallel_for(0, blocks, 64, [&](int64_t begin, int64_t end) {
      kernels::gguf_representation_grad_ref(
          x, dy, representations, type, begin, end, grad_d, grad_dmin);
    });
  }

  static float microscale_global_scale(const float* x, int64_t n) {
    // A maximum of magnitudes, NaN winning: the same for any split.
    const auto larger = [](float a, float b) {
      return kernels::max_magnitude(a, b);
    };
    const float amax = at::parallel_reduce(
        0,
        n,
        1 << 16,
        0.0f,
        [&](int64_t begin, int64_t end, float ident) {
          return larger(
              ident, kernels::microscale_amax_fast(x + begin, end - begin));
        },
        larger);
    return kernels::nvfp4_global_scale(amax);
  }

  static void microscale(
      const float* x,
      float* y,
      uint8_t* mask,
      int64_t blocks,
      kernels::MicroscaleFormat format,
      float global_scale) {
    // Blocks never cross a row, so the tensor is `blocks` rows of one block.
    const int64_t block = kernels::microscale_block_size(format);
    at::parallel_for(0, blocks, 1 << 10, [&](int64_t begin, int64_t end) {
      const int64_t offset = begin * block;
      kernels::fake_quant_microscale_fast(
          x + offset,
          y + offset,
          mask ? mask + offset : nullptr,
          end - begin,
          block,
          format,
          /*scale_codes=*/nullptr,
          global_scale,
          /*scale_codes_out=*/nullptr);
    });
  }

  template <typename T>
  static void mask_backward(
      const T* dy,
      const uint8_t* mask,
      T* dx,
      int64_t n) {
    at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
      kernels::mask_backward_fast(dy, mask, dx, begin, end);
    });
  }

  template <typename T>
  static void lsq_backward(
      const T* x,
      const T* dy,
      T* dx,
      double* dscale_rows,
      double* dzero_point_rows,
      const RowLayout& layout,
      const AffineParams& params,
      float grad_factor) {
    parallel_rows(layout, [&](int64_t begin, int64_t end) {
      kernels::lsq_backward_fast(
          x,
          dy,
          dx,
          dscale_rows,
          dzero_point_rows,
          layout,
          params,
          grad_factor,
          begin,
          end);
    });
  }

  // Serially, in row order: the same sums for any thread count.
  static at::Tensor rows_to_params(const at::Tensor& rows, int64_t period) {
    std::vector<double> sums(period, 0.0);
    const double* row = rows.const_data_ptr<double>();
    for (int64_t r = 0; r < rows.numel(); ++r) {
      sums[r % period] += row[r];
    }
    return at::tensor(sums, at::dtype(at::kDouble)).to(at::kFloat);
  }
};

} // namespace

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  detail::FakeQuantOps<Cpu>::register_impls(m);
}

} // namespace qat::ops
