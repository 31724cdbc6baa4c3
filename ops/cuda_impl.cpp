// CUDA implementations: the shared op bodies of ops/fake_quant_impl.h with the
// Torch-free launchers of kernels/cuda on the current stream. Scale and zero
// point values are not checked here: reading them back would synchronise every
// call.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/cuda/fake_quant.cuh"
#include "kernels/cuda/microscale.cuh"
#include "ops/fake_quant_impl.h"

namespace qat::ops {
namespace {

using kernels::AffineParams;
using kernels::RowLayout;

void check_launch(cudaError_t status) {
  TORCH_CHECK(
      status == cudaSuccess,
      "qat: CUDA kernel launch failed: ",
      cudaGetErrorString(status));
}

struct Cuda {
  static constexpr bool kCheckValues = false;
  using Guard = c10::cuda::CUDAGuard;

  template <typename T>
  static void affine(
      const T* x,
      T* y,
      uint8_t* mask,
      const RowLayout& layout,
      const AffineParams& params) {
    check_launch(kernels::cuda::fake_quant_affine(
        x, y, mask, layout, params, at::cuda::getCurrentCUDAStream()));
  }

  template <typename T>
  static void fp8(
      const T* x,
      T* y,
      uint8_t* mask,
      const RowLayout& layout,
      const float* scale,
      kernels::Fp8Format format) {
    check_launch(kernels::cuda::fake_quant_fp8(
        x, y, mask, layout, scale, format, at::cuda::getCurrentCUDAStream()));
  }

  template <typename T>
  static void gguf(
      const T* x,
      T* y,
      uint8_t* mask,
      kernels::GgufType type,
      int64_t blocks) {
    if (kernels::gguf_is_kquant(type))
      refuse_kquant(type);
    check_launch(kernels::cuda::fake_quant_gguf(
        x, y, mask, type, blocks, at::cuda::getCurrentCUDAStream()));
  }

  static void gguf_search(
      const float*,
      uint8_t*,
      kernels::GgufType type,
      int64_t) {
    refuse_kquant(type);
  }

  template <typename T>
  static void gguf_fixed(
      const T*,
      T*,
      uint8_t*,
      const uint8_t*,
      kernels::GgufType type,
      int64_t) {
    refuse_kquant(type);
  }

  static void gguf_representation_grad(
      const float*,
      const float*,
      const uint8_t*,
      kernels::GgufType type,
      int64_t,
      float*,
      float*) {
    refuse_kquant(type);
  }

  static float microscale_global_scale(const float* x, int64_t n) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    at::Tensor bits =
        at::empty({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
    check_launch(kernels::cuda::microscale_amax_bits(
        x, n, reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()), stream));
    const auto amax_bits = static_cast<uint32_t>(bits.item<int32_t>());
    return kernels::nvfp4_global_scale(kernels::bits_float(amax_bits));
  }

  static void microscale(
      const float* x,
      float* y,
      uint8_t* mask,
      int64_t blocks,
      kernels::MicroscaleFormat format,
      float global_scale) {
    check_launch(kernels::cuda::fake_quant_microscale(
        x,
        y,
        mask,
        blocks,
        format,
        global_scale,
        at::cuda::getCurrentCUDAStream()));
  }

  static void refuse_kquant(kernels::GgufType type) {
    TORCH_CHECK(
        false,
        "qat: the K-quant ",
        kernels::gguf_type_info(type).name,
        " has no CUDA kernel yet; fake-quantize it on the CPU");
  }

  template <typename T>
  static void mask_backward(
      const T* dy,
      const uint8_t* mask,
      T* dx,
      int64_t n) {
    check_launch(kernels::cuda::mask_backward(
        dy, mask, dx, n, at::cuda::getCurrentCUDAStream()));
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
    check_launch(kernels::cuda::lsq_backward(
        x,
        dy,
        dx,
        dscale_rows,
        dzero_point_rows,
        layout,
        params,
        grad_factor,
        at::cuda::getCurrentCUDAStream()));
  }

  // Rows form a [rows / period, period] matrix.
  static at::Tensor rows_to_params(const at::Tensor& rows, int64_t period) {
    return rows.view({-1, period}).sum(0).to(at::kFloat);
  }
};

} // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  detail::FakeQuantOps<Cuda>::register_impls(m);
}

} // namespace qat::ops
