// The qat operator library: schemas, the shared argument checks, and the Meta
// (shape-only) implementations used for tracing and torch.compile-style shape
// propagation.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "ops/internal.h"

namespace qat::ops::detail {
namespace {

std::string shape_string(at::IntArrayRef sizes) {
  return c10::str(sizes);
}

// Largest divisor of n not above `cap`: per-tensor rows long enough to
// vectorise, and enough of them to spread over threads.
int64_t per_tensor_row_len(int64_t n, int64_t cap = 16384) {
  for (int64_t d = std::min(n, cap); d > 1; --d) {
    if (n % d == 0)
      return d;
  }
  return 1;
}

} // namespace

at::Tensor Prepared::restore(const at::Tensor& result) const {
  return moved_axis ? result.movedim(-1, *moved_axis).contiguous() : result;
}

Prepared prepare(
    std::string_view op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t group_size) {
  TORCH_CHECK(
      input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
      op,
      ": input must be float32 or bfloat16, got ",
      input.scalar_type());
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat,
      op,
      ": scale must be float32, got ",
      scale.scalar_type());
  TORCH_CHECK(
      scale.device() == input.device(),
      op,
      ": scale is on ",
      scale.device(),
      " but input is on ",
      input.device());
  if (zero_point.defined()) {
    TORCH_CHECK(
        zero_point.device() == input.device(),
        op,
        ": zero_point is on ",
        zero_point.device(),
        " but input is on ",
        input.device());
    TORCH_CHECK(
        zero_point.sizes() == scale.sizes(),
        op,
        ": zero_point has shape ",
        shape_string(zero_point.sizes()),
        " but scale has shape ",
        shape_string(scale.sizes()),
        "; they must match");
    TORCH_CHECK(
        at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false),
        op,
        ": zero_point must be an integer tensor, got ",
        zero_point.scalar_type());
  }
  TORCH_CHECK(
      group_size >= 0, op, ": group_size must be >= 0, got ", group_size);

  Prepared p;
  const int64_t numel = input.numel();
  if (!axis) {
    TORCH_CHECK(
        group_size == 0,
        op,
        ": group_size ",
        group_size,
        " needs an axis to group along (axis is None: per-tensor)");
    TORCH_CHECK(
        scale.numel() == 1,
        op,
        ": per-tensor quantization (axis=None) takes one scale, got ",
        scale.numel(),
        " (shape ",
        shape_string(scale.sizes()),
        ")");
    p.input = input.contiguous();
    const int64_t row_len = numel == 0 ? 1 : per_tensor_row_len(numel);
    p.layout = {numel / row_len, row_len, 1};
  } else {
    TORCH_CHECK(
        input.dim() > 0,
        op,
        ": axis ",
        *axis,
        " given for a 0-dimensional input");
    const int64_t dim = c10::maybe_wrap_dim(*axis, input.dim());
    const int64_t axis_size = input.size(dim);
    if (group_size == 0) {
      TORCH_CHECK(
          scale.dim() == 1 && scale.numel() == axis_size,
          op,
          ": per-channel quantization along axis ",
          dim,
          " of an input of shape ",
          shape_string(input.sizes()),
          " needs a 1-D scale of ",
          axis_size,
          " elements, got shape ",
          shape_string(scale.sizes()));
      p.input = input.contiguous();
      const int64_t inner =
          c10::multiply_integers(input.sizes().slice(dim + 1));
      p.layout = {
          axis_size == 0 ? 0 : numel / inner,
          inner,
          std::max<int64_t>(axis_size, 1)};
    } else {
      TORCH_CHECK(
          axis_size % group_size == 0,
          op,
          ": group_size ",
          group_size,
          " does not divide the size ",
          axis_size,
          " of axis ",
          dim,
          " (input shape ",
          shape_string(input.sizes()),
          "); pick a group size that divides it");
      std::vector<int64_t> expected = input.sizes().vec();
      expected[dim] = axis_size / group_size;
      TORCH_CHECK(
          scale.sizes() == at::IntArrayRef(expected),
          op,
          ": per-group quantization with group_size ",
          group_size,
          " along axis ",
          dim,
          " of an input of shape ",
          shape_string(input.sizes()),
          " needs a scale of shape ",
          shape_string(expected),
          ", got ",
          shape_string(scale.sizes()));
      const bool last = dim == input.dim() - 1;
      p.input = last ? input.contiguous() : input.movedim(dim, -1).contiguous();
      if (!last)
        p.moved_axis = dim;
      const int64_t rows = numel / group_size;
      p.layout = {rows, group_size, std::max<int64_t>(rows, 1)};
      p.scale = last ? scale.contiguous() : scale.movedim(dim, -1).contiguous();
      if (zero_point.defined()) {
        p.zero_point = (last ? zero_point : zero_point.movedim(dim, -1))
                           .to(at::kInt)
                           .contiguous();
      }
      return p;
    }
  }
  p.scale = scale.contiguous();
  if (zero_point.defined())
    p.zero_point = zero_point.to(at::kInt).contiguous();
  return p;
}

void check_quant_range(
    std::string_view op,
    int64_t quant_min,
    int64_t quant_max) {
  TORCH_CHECK(
      quant_min <= quant_max,
      op,
      ": quant_min (",
      quant_min,
      ") must not be greater than quant_max (",
      quant_max,
      ")");
  // The kernels' rounding relies on codes and zero points within +-2^16
  // (kernels/quant_math.h, round_code); 16-bit codes are far beyond QAT's use.
  constexpr int64_t kLimit = int64_t{1} << 16;
  TORCH_CHECK(
      quant_min >= -kLimit && quant_max <= kLimit,
      op,
      ": the code range [",
      quant_min,
      ", ",
      quant_max,
      "] is too wide; codes must lie within [-65536, 65536]");
}

void check_param_values(
    std::string_view op,
    const Prepared& p,
    int64_t quant_min,
    int64_t quant_max) {
  if (!p.scale.device().is_cpu())
    return;
  const float* scale = p.scale.const_data_ptr<float>();
  for (int64_t i = 0; i < p.scale.numel(); ++i) {
    TORCH_CHECK(
        scale[i] > 0.0f && std::isfinite(scale[i]),
        op,
        ": every scale must be positive and finite, got scale[",
        i,
        "] = ",
        scale[i]);
  }
  if (!p.zero_point.defined())
    return;
  const int32_t* zero_point = p.zero_point.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < p.zero_point.numel(); ++i) {
    TORCH_CHECK(
        zero_point[i] >= quant_min && zero_point[i] <= quant_max,
        op,
        ": zero_point[",
        i,
        "] = ",
        zero_point[i],
        " is outside the code range [",
        quant_min,
        ", ",
        quant_max,
        "]");
  }
}

at::Tensor round_zero_point(
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  TORCH_CHECK(
      at::isFloatingType(zero_point.scalar_type()),
      "fake_quant_lsq: zero_point must be a float tensor (it is learnable), got ",
      zero_point.scalar_type());
  return zero_point.detach().round().clamp(quant_min, quant_max).to(at::kInt);
}

kernels::Fp8Format parse_fp8_format(
    std::string_view op,
    std::string_view format) {
  if (format == "e4m3fn" || format == "e4m3")
    return kernels::Fp8Format::e4m3fn;
  if (format == "e5m2")
    return kernels::Fp8Format::e5m2;
  TORCH_CHECK(
      false,
      op,
      ": unknown FP8 format '",
      std::string(format),
      "'; expected 'e4m3fn' (or 'e4m3') or 'e5m2'");
}

kernels::GgufType parse_gguf_type(std::string_view op, std::string_view type) {
  if (const auto* info = kernels::find_gguf_type(type))
    return info->type;
  int count = 0;
  const auto* types = kernels::gguf_types(&count);
  std::string names;
  for (int i = 0; i < count; ++i)
    names += (i ? ", '" : "'") + std::string(types[i].name) + "'";
  TORCH_CHECK(
      false,
      op,
      ": unknown GGUF block type '",
      std::string(type),
      "'; expected one of ",
      names);
}

kernels::GgufType parse_kquant_type(
    std::string_view op,
    std::string_view type) {
  const kernels::GgufType gguf = parse_gguf_type(op, type);
  TORCH_CHECK(
      kernels::gguf_is_kquant(gguf),
      op,
      ": GGUF ",
      std::string(type),
      " is quantized from its values alone; only the K-quants (q4_k, q5_k, "
      "q6_k) have a representation to search and keep");
  return gguf;
}

std::vector<int64_t> representation_shape(
    const at::Tensor& input,
    kernels::GgufType type) {
  auto shape = input.sizes().vec();
  shape.back() /= kernels::gguf_type_info(type).block_size;
  shape.push_back(kernels::gguf_type_info(type).representation_bytes);
  return shape;
}

void check_representations(
    std::string_view op,
    const at::Tensor& input,
    const at::Tensor& representations,
    kernels::GgufType type) {
  const auto expected = representation_shape(input, type);
  TORCH_CHECK(
      representations.scalar_type() == at::kByte &&
          representations.sizes() == at::IntArrayRef(expected) &&
          representations.device() == input.device(),
      op,
      ": representations must be uint8 of shape ",
      at::IntArrayRef(expected),
      " on ",
      input.device(),
      " (qat::gguf_search of the input), got ",
      representations.scalar_type(),
      " ",
      representations.sizes(),
      " on ",
      representations.device());
}

namespace {

// A block format's input: float32 / bfloat16, blocks of `block_size` along
// the last dimension.
void check_block_input(
    std::string_view op,
    const at::Tensor& input,
    const std::string& format,
    int block_size) {
  TORCH_CHECK(
      input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
      op,
      ": input must be float32 or bfloat16, got ",
      input.scalar_type());
  TORCH_CHECK(
      input.dim() >= 1 && input.size(-1) % block_size == 0,
      op,
      ": ",
      format,
      " blocks are ",
      block_size,
      " consecutive values of the last dimension, which must be a multiple of ",
      block_size,
      "; got shape ",
      input.sizes());
}

} // namespace

void check_gguf_input(
    std::string_view op,
    const at::Tensor& input,
    kernels::GgufType type) {
  const auto& info = kernels::gguf_type_info(type);
  check_block_input(
      op, input, std::string("GGUF ") + info.name, info.block_size);
}

kernels::MicroscaleFormat parse_microscale_format(
    std::string_view op,
    std::string_view format) {
  if (const auto* info = kernels::find_microscale_format(format))
    return info->format;
  TORCH_CHECK(
      false,
      op,
      ": unknown microscaling format '",
      std::string(format),
      "'; expected 'nvfp4', 'mxfp4' or 'mxfp8'");
}

void check_microscale_input(
    std::string_view op,
    const at::Tensor& input,
    const std::optional<at::Tensor>& global_scale,
    kernels::MicroscaleFormat format) {
  const auto& info = kernels::microscale_format_info(format);
  check_block_input(op, input, info.name, info.block_size);
  if (!global_scale)
    return;
  TORCH_CHECK(
      info.global_scale,
      op,
      ": ",
      info.name,
      " has no global scale (its block scales are powers of two); pass None");
  TORCH_CHECK(
      global_scale->scalar_type() == at::kFloat && global_scale->numel() == 1 &&
          global_scale->device() == input.device(),
      op,
      ": the global scale must be one float32 value on ",
      input.device(),
      ", got ",
      global_scale->scalar_type(),
      " ",
      global_scale->sizes(),
      " on ",
      global_scale->device());
}

float checked_global_scale(
    std::string_view op,
    const at::Tensor& global_scale) {
  const float g = global_scale.item<float>();
  TORCH_CHECK(
      std::isfinite(g) && g > 0.0f,
      op,
      ": the NVFP4 global scale must be finite and positive, got ",
      g);
  return g;
}

} // namespace qat::ops::detail

namespace {

std::tuple<at::Tensor, at::Tensor> with_mask_meta(const at::Tensor& input) {
  return {
      at::empty_like(input),
      at::empty_like(input, input.options().dtype(at::kBool))};
}

at::Tensor fake_quant_affine_meta(
    const at::Tensor& input,
    const at::Tensor&,
    const at::Tensor&,
    std::optional<int64_t>,
    int64_t,
    int64_t,
    int64_t) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor> fake_quant_affine_cachemask_meta(
    const at::Tensor& input,
    const at::Tensor&,
    const at::Tensor&,
    std::optional<int64_t>,
    int64_t,
    int64_t,
    int64_t) {
  return with_mask_meta(input);
}
at::Tensor fake_quant_fp8_meta(
    const at::Tensor& input,
    const at::Tensor&,
    std::optional<int64_t>,
    int64_t,
    c10::string_view) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor> fake_quant_fp8_cachemask_meta(
    const at::Tensor& input,
    const at::Tensor&,
    std::optional<int64_t>,
    int64_t,
    c10::string_view) {
  return with_mask_meta(input);
}
at::Tensor fake_quant_gguf_meta(const at::Tensor& input, c10::string_view) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor> fake_quant_gguf_cachemask_meta(
    const at::Tensor& input,
    c10::string_view) {
  return with_mask_meta(input);
}
at::Tensor gguf_search_meta(const at::Tensor& input, c10::string_view type) {
  const auto gguf =
      qat::ops::detail::parse_kquant_type("qat::gguf_search", type);
  return at::empty(
      qat::ops::detail::representation_shape(input, gguf),
      input.options().dtype(at::kByte));
}
at::Tensor fake_quant_gguf_fixed_meta(
    const at::Tensor& input,
    const at::Tensor&,
    c10::string_view) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor> fake_quant_gguf_fixed_cachemask_meta(
    const at::Tensor& input,
    const at::Tensor&,
    c10::string_view) {
  return with_mask_meta(input);
}
std::tuple<at::Tensor, at::Tensor> gguf_representation_backward_meta(
    const at::Tensor&,
    const at::Tensor&,
    const at::Tensor& representations,
    c10::string_view) {
  const auto shape = representations.sizes().slice(
      0, std::max<int64_t>(representations.dim() - 1, 0));
  const auto options = representations.options().dtype(at::kFloat);
  return {at::empty(shape, options), at::empty(shape, options)};
}
at::Tensor fake_quant_microscale_meta(
    const at::Tensor& input,
    c10::string_view,
    const std::optional<at::Tensor>&) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor> fake_quant_microscale_cachemask_meta(
    const at::Tensor& input,
    c10::string_view,
    const std::optional<at::Tensor>&) {
  return with_mask_meta(input);
}
at::Tensor mask_backward_meta(const at::Tensor& grad, const at::Tensor&) {
  return at::empty_like(grad);
}
at::Tensor fake_quant_lsq_meta(
    const at::Tensor& input,
    const at::Tensor&,
    const at::Tensor&,
    std::optional<int64_t>,
    int64_t,
    int64_t,
    int64_t,
    double) {
  return at::empty_like(input);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_lsq_backward_meta(
    const at::Tensor& grad,
    const at::Tensor&,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t>,
    int64_t,
    int64_t,
    int64_t,
    double) {
  return {
      at::empty_like(grad), at::empty_like(scale), at::empty_like(zero_point)};
}

} // namespace

TORCH_LIBRARY(qat, m) {
  // Integer affine fake-quant with a straight-through gradient (zero outside
  // the code range).
  m.def(
      "fake_quant_affine(Tensor input, Tensor scale, Tensor zero_point, int? axis, "
      "int group_size, int quant_min, int quant_max) -> Tensor");
  m.def(
      "fake_quant_affine_cachemask(Tensor input, Tensor scale, Tensor zero_point, int? axis, "
      "int group_size, int quant_min, int quant_max) -> (Tensor output, Tensor mask)");
  // FP8 (e4m3fn / e5m2) fake-quant with a scale, saturating, straight-through
  // gradient.
  m.def(
      "fake_quant_fp8(Tensor input, Tensor scale, int? axis, int group_size, str format) -> Tensor");
  m.def(
      "fake_quant_fp8_cachemask(Tensor input, Tensor scale, int? axis, int group_size, "
      "str format) -> (Tensor output, Tensor mask)");
  // GGUF blocks (Q8_0 ... Q6_K) along the last dimension, scales computed
  // from each block (kernels/quant_math.h), straight-through gradient.
  m.def("fake_quant_gguf(Tensor input, str type) -> Tensor");
  m.def(
      "fake_quant_gguf_cachemask(Tensor input, str type) -> (Tensor output, Tensor mask)");
  // K-quants with a kept representation: ggml's search once (uint8, the
  // bytes ggml stores for each super-block's scales and mins), then
  // fake-quant under it with a straight-through gradient for the input.
  m.def("gguf_search(Tensor input, str type) -> Tensor");
  m.def(
      "fake_quant_gguf_fixed(Tensor input, Tensor representations, str type) -> Tensor");
  m.def(
      "fake_quant_gguf_fixed_cachemask(Tensor input, Tensor representations, str type) -> (Tensor output, Tensor mask)");
  // K-quants with learned halves d and dmin (float, a representation each):
  // LSQ's gradient for them, straight through for the input.
  m.def(
      "fake_quant_gguf_learned(Tensor input, Tensor representations, Tensor d, Tensor dmin, "
      "str type, float grad_factor) -> Tensor");
  m.def(
      "gguf_representation_backward(Tensor grad, Tensor input, Tensor representations, str type) "
      "-> (Tensor grad_d, Tensor grad_dmin)");
  // Microscaling formats (NVFP4, MXFP4, MXFP8): dynamic block scales, NVFP4's
  // global scale given or computed, straight-through gradient.
  m.def(
      "fake_quant_microscale(Tensor input, str format, Tensor? global_scale) -> Tensor");
  m.def(
      "fake_quant_microscale_cachemask(Tensor input, str format, Tensor? global_scale) -> (Tensor output, Tensor mask)");
  m.def("mask_backward(Tensor grad, Tensor mask) -> Tensor");
  // LSQ / LSQ+: learnable scale and (float) zero point.
  m.def(
      "fake_quant_lsq(Tensor input, Tensor scale, Tensor zero_point, int? axis, int group_size, "
      "int quant_min, int quant_max, float grad_factor) -> Tensor");
  m.def(
      "fake_quant_lsq_backward(Tensor grad, Tensor input, Tensor scale, Tensor zero_point, "
      "int? axis, int group_size, int quant_min, int quant_max, float grad_factor) "
      "-> (Tensor grad_input, Tensor grad_scale, Tensor grad_zero_point)");
}

TORCH_LIBRARY_IMPL(qat, Meta, m) {
  m.impl("fake_quant_affine", fake_quant_affine_meta);
  m.impl("fake_quant_affine_cachemask", fake_quant_affine_cachemask_meta);
  m.impl("fake_quant_fp8", fake_quant_fp8_meta);
  m.impl("fake_quant_fp8_cachemask", fake_quant_fp8_cachemask_meta);
  m.impl("fake_quant_gguf", fake_quant_gguf_meta);
  m.impl("gguf_search", gguf_search_meta);
  m.impl("fake_quant_gguf_fixed", fake_quant_gguf_fixed_meta);
  m.impl(
      "fake_quant_gguf_fixed_cachemask", fake_quant_gguf_fixed_cachemask_meta);
  m.impl("fake_quant_gguf_cachemask", fake_quant_gguf_cachemask_meta);
  m.impl("gguf_representation_backward", gguf_representation_backward_meta);
  m.impl("fake_quant_microscale", fake_quant_microscale_meta);
  m.impl(
      "fake_quant_microscale_cachemask", fake_quant_microscale_cachemask_meta);
  m.impl("mask_backward", mask_backward_meta);
  m.impl("fake_quant_lsq", fake_quant_lsq_meta);
  m.impl("fake_quant_lsq_backward", fake_quant_lsq_backward_meta);
}
