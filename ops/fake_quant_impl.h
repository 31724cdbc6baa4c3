// The backend ops, written once: check and lay out the arguments
// (ops/internal.h), allocate, run the device's kernels, restore the caller's
// layout. A device supplies a policy:
//
//   struct Device {
//     static constexpr bool kCheckValues;   // read scale / zero point values
//     (not on CUDA) using Guard;                          // constructed from
//     the input's device template <class T> static void affine(const T* x, T*
//     y, uint8_t* mask, const RowLayout&,
//                                           const AffineParams&);
//     template <class T> static void fp8(const T* x, T* y, uint8_t* mask, const
//     RowLayout&,
//                                        const float* scale, Fp8Format);
//     template <class T> static void gguf(const T* x, T* y, uint8_t* mask,
//                                         GgufType, int64_t blocks);
//     static void gguf_search(const float* x, uint8_t* representations,
//                             GgufType, int64_t n);
//     template <class T> static void gguf_fixed(const T* x, T* y, uint8_t* mask,
//                                               const uint8_t* representations,
//                                               GgufType, int64_t blocks);
//     static void gguf_representation_grad(const float* x, const float* dy,
//                                          const uint8_t* representations,
//                                          GgufType, int64_t blocks,
//                                          float* grad_d, float* grad_dmin);
//     // NVFP4's global scale of n values; the microscaling fake-quant of
//     // `blocks` consecutive blocks under it (ignored by the MX formats).
//     static float microscale_global_scale(const float* x, int64_t n);
//     static void microscale(const float* x, float* y, uint8_t* mask,
//                            int64_t blocks, MicroscaleFormat, float g);
//     template <class T> static void mask_backward(const T* dy, const uint8_t*
//     mask, T* dx,
//                                                  int64_t n);
//     template <class T> static void lsq_backward(const T* x, const T* dy, T*
//     dx,
//                                                 double* dscale_rows, double*
//                                                 dzp_rows, const RowLayout&,
//                                                 const AffineParams&, float);
//     // Row sums [rows] (double) -> parameter sums [period] (float).
//     static at::Tensor rows_to_params(const at::Tensor& rows, int64_t period);
//   };
//
// and registers FakeQuantOps<Device>::register_impls in its TORCH_LIBRARY_IMPL
// block.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/internal.h"

namespace qat::ops::detail {

template <class Device>
struct FakeQuantOps {
  static std::tuple<at::Tensor, at::Tensor> affine_forward(
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max,
      bool with_mask) {
    constexpr std::string_view op = "qat::fake_quant_affine";
    check_quant_range(op, quant_min, quant_max);
    const typename Device::Guard guard(input.device());
    const Prepared p = prepare(op, input, scale, zero_point, axis, group_size);
    if constexpr (Device::kCheckValues) {
      check_param_values(op, p, quant_min, quant_max);
    }
    at::Tensor output = at::empty_like(p.input);
    at::Tensor mask = empty_mask_like(p.input, with_mask);
    dispatch_float_types(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::affine(
          data_as<T>(p.input),
          data_as<T>(output),
          with_mask ? data_as<uint8_t>(mask) : nullptr,
          p.layout,
          affine_params(p, quant_min, quant_max));
    });
    return {p.restore(output), with_mask ? p.restore(mask) : mask};
  }

  static std::tuple<at::Tensor, at::Tensor> fp8_forward(
      const at::Tensor& input,
      const at::Tensor& scale,
      std::optional<int64_t> axis,
      int64_t group_size,
      c10::string_view format,
      bool with_mask) {
    constexpr std::string_view op = "qat::fake_quant_fp8";
    const kernels::Fp8Format fmt = parse_fp8_format(op, format);
    const typename Device::Guard guard(input.device());
    const Prepared p =
        prepare(op, input, scale, at::Tensor(), axis, group_size);
    if constexpr (Device::kCheckValues) {
      check_param_values(op, p, 0, 0);
    }
    at::Tensor output = at::empty_like(p.input);
    at::Tensor mask = empty_mask_like(p.input, with_mask);
    dispatch_float_types(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::fp8(
          data_as<T>(p.input),
          data_as<T>(output),
          with_mask ? data_as<uint8_t>(mask) : nullptr,
          p.layout,
          p.scale.template const_data_ptr<float>(),
          fmt);
    });
    return {p.restore(output), with_mask ? p.restore(mask) : mask};
  }

  static std::tuple<at::Tensor, at::Tensor> gguf_forward(
      const at::Tensor& input,
      c10::string_view type,
      bool with_mask) {
    constexpr std::string_view op = "qat::fake_quant_gguf";
    const kernels::GgufType gguf = parse_gguf_type(op, type);
    check_gguf_input(op, input, gguf);
    const typename Device::Guard guard(input.device());
    const at::Tensor x = input.contiguous();
    at::Tensor output = at::empty_like(x);
    at::Tensor mask = empty_mask_like(x, with_mask);
    dispatch_float_types(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::gguf(
          data_as<T>(x),
          data_as<T>(output),
          with_mask ? data_as<uint8_t>(mask) : nullptr,
          gguf,
          x.numel() / kernels::gguf_type_info(gguf).block_size);
    });
    return {output, mask};
  }

  // K-quants: each super-block's representation, found by ggml's search.
  static at::Tensor gguf_search(
      const at::Tensor& input,
      c10::string_view type) {
    constexpr std::string_view op = "qat::gguf_search";
    const kernels::GgufType gguf = parse_kquant_type(op, type);
    check_gguf_input(op, input, gguf);
    const typename Device::Guard guard(input.device());
    const at::Tensor x = input.contiguous().to(at::kFloat);
    at::Tensor representations = at::empty(
        representation_shape(input, gguf), x.options().dtype(at::kByte));
    Device::gguf_search(
        data_as<float>(x), data_as<uint8_t>(representations), gguf, x.numel());
    return representations;
  }

  static std::tuple<at::Tensor, at::Tensor> gguf_fixed_forward(
      const at::Tensor& input,
      const at::Tensor& representations,
      c10::string_view type,
      bool with_mask) {
    constexpr std::string_view op = "qat::fake_quant_gguf_fixed";
    const kernels::GgufType gguf = parse_kquant_type(op, type);
    check_gguf_input(op, input, gguf);
    check_representations(op, input, representations, gguf);
    const typename Device::Guard guard(input.device());
    const at::Tensor x = input.contiguous();
    const at::Tensor reps = representations.contiguous();
    at::Tensor output = at::empty_like(x);
    at::Tensor mask = empty_mask_like(x, with_mask);
    dispatch_float_types(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::gguf_fixed(
          data_as<T>(x),
          data_as<T>(output),
          with_mask ? data_as<uint8_t>(mask) : nullptr,
          data_as<uint8_t>(reps),
          gguf,
          x.numel() / kernels::gguf_type_info(gguf).block_size);
    });
    return {output, mask};
  }

  static at::Tensor gguf_fixed(
      const at::Tensor& input,
      const at::Tensor& representations,
      c10::string_view type) {
    return std::get<0>(gguf_fixed_forward(input, representations, type, false));
  }

  static std::tuple<at::Tensor, at::Tensor> gguf_fixed_cachemask(
      const at::Tensor& input,
      const at::Tensor& representations,
      c10::string_view type) {
    return gguf_fixed_forward(input, representations, type, true);
  }

  // Learned K-quants: the gradients for each super-block's halves.
  static std::tuple<at::Tensor, at::Tensor> gguf_representation_backward(
      const at::Tensor& grad,
      const at::Tensor& input,
      const at::Tensor& representations,
      c10::string_view type) {
    constexpr std::string_view op = "qat::gguf_representation_backward";
    const kernels::GgufType gguf = parse_kquant_type(op, type);
    check_gguf_input(op, input, gguf);
    check_representations(op, input, representations, gguf);
    TORCH_CHECK(
        grad.sizes() == input.sizes(),
        op,
        ": grad must have the input's shape ",
        input.sizes(),
        ", got ",
        grad.sizes());
    const typename Device::Guard guard(input.device());
    const at::Tensor x = input.contiguous().to(at::kFloat);
    const at::Tensor dy = grad.contiguous().to(at::kFloat);
    const at::Tensor reps = representations.contiguous();
    const auto shape = reps.sizes().slice(0, reps.dim() - 1);
    at::Tensor grad_d = at::empty(shape, x.options());
    at::Tensor grad_dmin = at::empty(shape, x.options());
    Device::gguf_representation_grad(
        data_as<float>(x),
        data_as<float>(dy),
        data_as<uint8_t>(reps),
        gguf,
        grad_d.numel(),
        data_as<float>(grad_d),
        data_as<float>(grad_dmin));
    return {grad_d, grad_dmin};
  }

  static at::Tensor gguf(const at::Tensor& input, c10::string_view type) {
    return std::get<0>(gguf_forward(input, type, false));
  }

  static std::tuple<at::Tensor, at::Tensor> gguf_cachemask(
      const at::Tensor& input,
      c10::string_view type) {
    return gguf_forward(input, type, true);
  }

  static std::tuple<at::Tensor, at::Tensor> microscale_forward(
      const at::Tensor& input,
      c10::string_view format,
      const std::optional<at::Tensor>& global_scale,
      bool with_mask) {
    constexpr std::string_view op = "qat::fake_quant_microscale";
    const kernels::MicroscaleFormat fmt = parse_microscale_format(op, format);
    check_microscale_input(op, input, global_scale, fmt);
    const typename Device::Guard guard(input.device());
    // The rules are compressed-tensors' float32 arithmetic.
    const at::Tensor x = input.contiguous().to(at::kFloat);
    at::Tensor output = at::empty_like(x);
    at::Tensor mask = empty_mask_like(x, with_mask);
    if (x.numel() > 0) {
      float g = 1.0f;
      if (kernels::microscale_format_info(fmt).global_scale) {
        g = global_scale
            ? checked_global_scale(op, *global_scale)
            : Device::microscale_global_scale(data_as<float>(x), x.numel());
      }
      Device::microscale(
          data_as<float>(x),
          data_as<float>(output),
          with_mask ? data_as<uint8_t>(mask) : nullptr,
          x.numel() / kernels::microscale_block_size(fmt),
          fmt,
          g);
    }
    return {output.to(input.scalar_type()), mask};
  }

  static at::Tensor microscale(
      const at::Tensor& input,
      c10::string_view format,
      const std::optional<at::Tensor>& global_scale) {
    return std::get<0>(microscale_forward(input, format, global_scale, false));
  }

  static std::tuple<at::Tensor, at::Tensor> microscale_cachemask(
      const at::Tensor& input,
      c10::string_view format,
      const std::optional<at::Tensor>& global_scale) {
    return microscale_forward(input, format, global_scale, true);
  }

  static at::Tensor affine(
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max) {
    return std::get<0>(affine_forward(
        input,
        scale,
        zero_point,
        axis,
        group_size,
        quant_min,
        quant_max,
        /*with_mask=*/false));
  }

  static std::tuple<at::Tensor, at::Tensor> affine_cachemask(
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max) {
    return affine_forward(
        input,
        scale,
        zero_point,
        axis,
        group_size,
        quant_min,
        quant_max,
        /*with_mask=*/true);
  }

  static at::Tensor fp8(
      const at::Tensor& input,
      const at::Tensor& scale,
      std::optional<int64_t> axis,
      int64_t group_size,
      c10::string_view format) {
    return std::get<0>(
        fp8_forward(input, scale, axis, group_size, format, false));
  }

  static std::tuple<at::Tensor, at::Tensor> fp8_cachemask(
      const at::Tensor& input,
      const at::Tensor& scale,
      std::optional<int64_t> axis,
      int64_t group_size,
      c10::string_view format) {
    return fp8_forward(input, scale, axis, group_size, format, true);
  }

  static at::Tensor mask_backward(
      const at::Tensor& grad,
      const at::Tensor& mask) {
    constexpr std::string_view op = "qat::mask_backward";
    TORCH_CHECK(
        mask.scalar_type() == at::kBool,
        op,
        ": mask must be bool, got ",
        mask.scalar_type());
    TORCH_CHECK(
        grad.sizes() == mask.sizes(),
        op,
        ": grad has shape ",
        grad.sizes(),
        " but mask has shape ",
        mask.sizes());
    TORCH_CHECK(
        grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16,
        op,
        ": grad must be float32 or bfloat16, got ",
        grad.scalar_type());
    const typename Device::Guard guard(grad.device());
    const at::Tensor dy = grad.contiguous();
    const at::Tensor keep = mask.contiguous();
    at::Tensor dx = at::empty_like(dy);
    dispatch_float_types(dy.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::mask_backward(
          data_as<T>(dy), data_as<uint8_t>(keep), data_as<T>(dx), dy.numel());
    });
    return dx;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> lsq_backward(
      const at::Tensor& grad,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      int64_t quant_min,
      int64_t quant_max,
      double grad_factor) {
    constexpr std::string_view op = "qat::fake_quant_lsq_backward";
    check_quant_range(op, quant_min, quant_max);
    TORCH_CHECK(
        grad.sizes() == input.sizes(),
        op,
        ": grad has shape ",
        grad.sizes(),
        " but input has shape ",
        input.sizes());
    TORCH_CHECK(
        grad.scalar_type() == input.scalar_type(),
        op,
        ": grad is ",
        grad.scalar_type(),
        " but input is ",
        input.scalar_type());
    const typename Device::Guard guard(input.device());
    const at::Tensor zp_int =
        round_zero_point(zero_point, quant_min, quant_max);
    const Prepared p = prepare(op, input, scale, zp_int, axis, group_size);
    if constexpr (Device::kCheckValues) {
      check_param_values(op, p, quant_min, quant_max);
    }
    const at::Tensor dy = p.moved_axis
        ? grad.movedim(*p.moved_axis, -1).contiguous()
        : grad.contiguous();
    at::Tensor dx = at::empty_like(p.input);
    const auto doubles = p.input.options().dtype(at::kDouble);
    at::Tensor dscale_rows = at::empty({p.layout.rows}, doubles);
    at::Tensor dzero_point_rows = at::empty({p.layout.rows}, doubles);
    dispatch_float_types(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      Device::lsq_backward(
          data_as<T>(p.input),
          data_as<T>(dy),
          data_as<T>(dx),
          data_as<double>(dscale_rows),
          data_as<double>(dzero_point_rows),
          p.layout,
          affine_params(p, quant_min, quant_max),
          static_cast<float>(grad_factor));
    });
    // Row r feeds parameter r % period; back to the caller's parameter shape.
    auto to_params = [&](const at::Tensor& rows, const at::Tensor& like) {
      const at::Tensor sums =
          Device::rows_to_params(rows, p.layout.param_period);
      return p.restore(sums.view(p.scale.sizes())).view(like.sizes());
    };
    return {
        p.restore(dx),
        to_params(dscale_rows, scale),
        to_params(dzero_point_rows, zero_point)};
  }

  static void register_impls(torch::Library& m) {
    m.impl("fake_quant_affine", affine);
    m.impl("fake_quant_affine_cachemask", affine_cachemask);
    m.impl("fake_quant_fp8", fp8);
    m.impl("fake_quant_fp8_cachemask", fp8_cachemask);
    m.impl("fake_quant_gguf", gguf);
    m.impl("fake_quant_gguf_cachemask", gguf_cachemask);
    m.impl("gguf_search", gguf_search);
    m.impl("fake_quant_gguf_fixed", gguf_fixed);
    m.impl("fake_quant_gguf_fixed_cachemask", gguf_fixed_cachemask);
    m.impl("gguf_representation_backward", gguf_representation_backward);
    m.impl("fake_quant_microscale", microscale);
    m.impl("fake_quant_microscale_cachemask", microscale_cachemask);
    m.impl("mask_backward", mask_backward);
    m.impl("fake_quant_lsq_backward", lsq_backward);
  }
};

} // namespace qat::ops::detail
