// The simulated-matmul ops: schemas, the shared checks, and the CPU (the
// reference kernels of kernels/ref/qmatmul_ref.h), Meta and autograd
// implementations. The CUDA ones are in ops/cuda_impl_qmatmul.cpp.
//
//   quantize_rows  a matrix to int8 / e4m3fn codes with one scale per row
//                  (dynamic from the row, or given), and the in-range mask
//   qmatmul        codes x codes on integer / FP8 arithmetic, dequantized with
//                  the rows' scales (plus a bias)
//   quant_linear   the two above as a linear layer with the straight-through
//                  gradient of the fake-quant composition it simulates
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>

#include "ops/internal.h"
#include "ops/ops.h"
#include "ops/qmatmul_impl.h"

namespace qat::ops::detail {

kernels::MatmulFormat parse_matmul_format(
    std::string_view op,
    std::string_view format) {
  if (format == "int8")
    return kernels::MatmulFormat::int8;
  if (format == "e4m3fn" || format == "e4m3")
    return kernels::MatmulFormat::e4m3fn;
  TORCH_CHECK(
      false,
      op,
      ": unknown matmul format '",
      std::string(format),
      "'; expected 'int8' or 'e4m3fn' (or 'e4m3')");
}

namespace {

at::ScalarType code_dtype(kernels::MatmulFormat format) {
  return format == kernels::MatmulFormat::int8 ? at::kChar : at::kFloat8_e4m3fn;
}

} // namespace

kernels::RowScales QuantizeRowsCall::scales() const {
  if (!given_scale.defined())
    return {};
  return {
      given_scale.const_data_ptr<float>(), given_scale.numel() == 1 ? 0 : 1};
}

QuantizeRowsCall prepare_quantize_rows(
    const at::Tensor& input,
    const std::optional<at::Tensor>& scale,
    std::string_view format) {
  constexpr std::string_view op = "qat::quantize_rows";
  QuantizeRowsCall call;
  call.format = parse_matmul_format(op, format);
  TORCH_CHECK(
      input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
      op,
      ": input must be float32 or bfloat16, got ",
      input.scalar_type());
  TORCH_CHECK(
      input.dim() == 2,
      op,
      ": input must be a matrix [rows, cols], got shape ",
      input.sizes());
  const int64_t rows = input.size(0);
  if (scale && scale->defined()) {
    TORCH_CHECK(
        scale->scalar_type() == at::kFloat,
        op,
        ": scale must be float32, got ",
        scale->scalar_type());
    TORCH_CHECK(
        scale->device() == input.device(),
        op,
        ": scale is on ",
        scale->device(),
        " but input is on ",
        input.device());
    TORCH_CHECK(
        scale->numel() == 1 || scale->numel() == rows,
        op,
        ": scale must hold one value or one per row (",
        rows,
        "), got shape ",
        scale->sizes());
    call.given_scale = scale->contiguous();
  }
  call.input = input.contiguous();
  call.codes =
      at::empty(input.sizes(), input.options().dtype(code_dtype(call.format)));
  call.row_scale = at::empty({rows}, input.options().dtype(at::kFloat));
  call.mask = at::empty(input.sizes(), input.options().dtype(at::kBool));
  return call;
}

kernels::Epilogue QMatmulCall::epilogue() const {
  return {
      a_scale.const_data_ptr<float>(),
      b_scale.const_data_ptr<float>(),
      bias.defined() ? bias.const_data_ptr<float>() : nullptr};
}

QMatmulCall prepare_qmatmul(
    const at::Tensor& a,
    const at::Tensor& b,
    const at::Tensor& a_scale,
    const at::Tensor& b_scale,
    const std::optional<at::Tensor>& bias,
    at::ScalarType out_dtype) {
  constexpr std::string_view op = "qat::qmatmul";
  TORCH_CHECK(
      a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
      op,
      ": a [m, k] and b [n, k] must be matrices with the same k, got shapes ",
      a.sizes(),
      " and ",
      b.sizes());
  TORCH_CHECK(
      a.scalar_type() == b.scalar_type() &&
          (a.scalar_type() == at::kChar ||
           a.scalar_type() == at::kFloat8_e4m3fn),
      op,
      ": a and b must both be int8 or both float8_e4m3fn codes, got ",
      a.scalar_type(),
      " and ",
      b.scalar_type());
  TORCH_CHECK(
      out_dtype == at::kFloat || out_dtype == at::kBFloat16,
      op,
      ": out_dtype must be float32 or bfloat16, got ",
      out_dtype);
  QMatmulCall call;
  call.format = a.scalar_type() == at::kChar ? kernels::MatmulFormat::int8
                                             : kernels::MatmulFormat::e4m3fn;
  call.m = a.size(0);
  call.n = b.size(0);
  call.k = a.size(1);
  const auto check_vector =
      [&](const at::Tensor& t, const char* name, int64_t size) {
        TORCH_CHECK(
            t.device() == a.device(),
            op,
            ": ",
            name,
            " is on ",
            t.device(),
            " but a is on ",
            a.device());
        TORCH_CHECK(
            t.numel() == size,
            op,
            ": ",
            name,
            " must hold ",
            size,
            " values, got shape ",
            t.sizes());
        TORCH_CHECK(
            at::isFloatingType(t.scalar_type()),
            op,
            ": ",
            name,
            " must be a float tensor, got ",
            t.scalar_type());
        return t.reshape({size}).to(at::kFloat).contiguous();
      };
  TORCH_CHECK(
      b.device() == a.device(), op, ": a and b are on different devices");
  call.a = a.contiguous();
  call.b = b.contiguous();
  call.a_scale = check_vector(a_scale, "a_scale", call.m);
  call.b_scale = check_vector(b_scale, "b_scale", call.n);
  if (bias && bias->defined())
    call.bias = check_vector(*bias, "bias", call.n);
  call.out_dtype = out_dtype;
  return call;
}

} // namespace qat::ops::detail

namespace qat::ops {
namespace {

using at::Tensor;
using detail::dispatch_matmul_format;
using detail::QuantizeRowsCall;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// At least ~32K elements of work per task.
int64_t grain_rows(int64_t row_len) {
  return std::max<int64_t>(
      1, (int64_t{1} << 15) / std::max<int64_t>(1, row_len));
}

std::tuple<Tensor, Tensor, Tensor> quantize_rows_meta(
    const Tensor& input,
    const std::optional<Tensor>& scale,
    c10::string_view format) {
  const QuantizeRowsCall call =
      detail::prepare_quantize_rows(input, scale, format);
  return {call.codes, call.row_scale, call.mask};
}

std::tuple<Tensor, Tensor, Tensor> quantize_rows_cpu(
    const Tensor& input,
    const std::optional<Tensor>& scale,
    c10::string_view format) {
  const QuantizeRowsCall call =
      detail::prepare_quantize_rows(input, scale, format);
  if (call.given_scale.defined()) {
    const float* s = call.given_scale.const_data_ptr<float>();
    for (int64_t i = 0; i < call.given_scale.numel(); ++i) {
      TORCH_CHECK(
          s[i] > 0.0f && std::isfinite(s[i]),
          "qat::quantize_rows: every scale must be positive and finite, got scale[",
          i,
          "] = ",
          s[i]);
    }
  }
  const int64_t cols = call.input.size(1);
  dispatch_matmul_format(call.format, [&](auto format) {
    constexpr kernels::MatmulFormat F = decltype(format)::value;
    detail::dispatch_float_types(call.input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      at::parallel_for(
          0,
          call.input.size(0),
          grain_rows(cols),
          [&](int64_t begin, int64_t end) {
            kernels::quantize_rows_ref<F, T>(
                detail::data_as<T>(call.input),
                cols,
                call.scales(),
                call.outputs<F>(),
                begin,
                end);
          });
    });
  });
  return {call.codes, call.row_scale, call.mask};
}

Tensor qmatmul_meta(
    const Tensor& a,
    const Tensor& b,
    const Tensor& a_scale,
    const Tensor& b_scale,
    const std::optional<Tensor>& bias,
    at::ScalarType out_dtype) {
  const auto call =
      detail::prepare_qmatmul(a, b, a_scale, b_scale, bias, out_dtype);
  return at::empty({call.m, call.n}, a.options().dtype(out_dtype));
}

// The reference kernels, rows split across threads.
Tensor qmatmul_cpu(
    const Tensor& a,
    const Tensor& b,
    const Tensor& a_scale,
    const Tensor& b_scale,
    const std::optional<Tensor>& bias,
    at::ScalarType out_dtype) {
  const auto call =
      detail::prepare_qmatmul(a, b, a_scale, b_scale, bias, out_dtype);
  Tensor out = at::empty({call.m, call.n}, a.options().dtype(out_dtype));
  dispatch_matmul_format(call.format, [&](auto format) {
    constexpr kernels::MatmulFormat F = decltype(format)::value;
    using Code = kernels::MatmulCode<F>;
    using Acc = kernels::MatmulAcc<F>;
    std::vector<Acc> acc(call.m * call.n);
    detail::dispatch_float_types(out_dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      at::parallel_for(
          0,
          call.m,
          grain_rows(call.n * call.k),
          [&](int64_t begin, int64_t end) {
            kernels::matmul_codes_ref<F>(
                detail::data_as<Code>(call.a),
                detail::data_as<Code>(call.b),
                acc.data(),
                call.n,
                call.k,
                begin,
                end);
            kernels::dequantize_ref<Acc, T>(
                acc.data(),
                call.n,
                call.epilogue(),
                detail::data_as<T>(out),
                call.n,
                begin,
                end);
          });
    });
  });
  return out;
}

// The forward of quant_linear, with what its backward needs.
struct QuantLinearForward {
  Tensor output;
  Tensor x_codes, x_scale, x_mask, w_codes, w_scale;
};

QuantLinearForward quant_linear_forward(
    const Tensor& input,
    const Tensor& weight,
    const Tensor& weight_scale,
    const std::optional<Tensor>& bias,
    c10::string_view format) {
  TORCH_CHECK(
      input.dim() >= 1 && weight.dim() == 2 && input.size(-1) == weight.size(1),
      "qat::quant_linear: input [..., in_features] and weight [out_features, "
      "in_features] do not fit: shapes ",
      input.sizes(),
      " and ",
      weight.sizes());
  const std::string_view fmt(format.data(), format.size());
  auto [x_codes, x_scale, x_mask] =
      quantize_rows(input.reshape({-1, input.size(-1)}), std::nullopt, fmt);
  // The weight's mask is its quantizer's business (see QuantLinearFunction).
  Tensor w_codes, w_scale;
  std::tie(w_codes, w_scale, std::ignore) =
      quantize_rows(weight, weight_scale, fmt);
  auto sizes = input.sizes().vec();
  sizes.back() = weight.size(0);
  const Tensor y =
      qmatmul(x_codes, w_codes, x_scale, w_scale, bias, input.scalar_type());
  return {y.view(sizes), x_codes, x_scale, x_mask, w_codes, w_scale};
}

Tensor quant_linear_composite(
    const Tensor& input,
    const Tensor& weight,
    const Tensor& weight_scale,
    const std::optional<Tensor>& bias,
    c10::string_view format) {
  return quant_linear_forward(input, weight, weight_scale, bias, format).output;
}

// codes * scale per row, in dtype: the fake-quantized values bit for bit. The
// product is taken in float (the operands' common dtype) and rounded once to
// dtype as it is stored: one elementwise pass for int8 codes. Float8 takes part
// in no type promotion, so e4m3fn codes become bfloat16 first (exactly).
Tensor dequantize_rows(
    const Tensor& codes,
    const Tensor& scale,
    at::ScalarType dtype) {
  Tensor out = at::empty(codes.sizes(), codes.options().dtype(dtype));
  return at::mul_out(
      out,
      codes.scalar_type() == at::kFloat8_e4m3fn ? codes.to(at::kBFloat16)
                                                : codes,
      scale.unsqueeze(1));
}

// quant_linear's gradient. The forward simulates, with q(.) the row quantizers
// (x' = q(x) per token, w' = q(w) per output channel or tensor: the
// fake-quantized operands, as codes times scales),
//   y = x' w'^T + b.
// The backward is the fake-quant composition's under the straight-through
// estimator (rounding is the identity, the clamp is constant outside the code
// range, which the input quantizer's mask m_x records):
//   dL/dx = (dL/dy w') * m_x
//   dL/dw = dL/dy^T x'
//   dL/db = sum over rows of dL/dy
// The weight's clamp mask belongs to the weight quantizer whose output
// QuantLinear passes as `weight` (its values lie on the grid, so w' = w
// exactly), and that quantizer's own backward applies it (mask or LSQ).
// Re-deriving it here would be wrong at the grid's edge: a saturated FP8 value
// divided by its scale can land an ulp beyond 448. The scales get no
// gradient: the input's is recomputed from every input, the weight's belongs
// to the weight quantizer.
class QuantLinearFunction
    : public torch::autograd::Function<QuantLinearFunction> {
 public:
  static Tensor forward(
      AutogradContext* ctx,
      const Tensor& input,
      const Tensor& weight,
      const Tensor& weight_scale,
      const std::optional<Tensor>& bias,
      c10::string_view format) {
    at::AutoDispatchBelowADInplaceOrView guard;
    QuantLinearForward f =
        quant_linear_forward(input, weight, weight_scale, bias, format);
    ctx->save_for_backward(
        {f.x_codes, f.x_scale, f.x_mask, f.w_codes, f.w_scale});
    ctx->saved_data["input_sizes"] = input.sizes();
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return f.output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x_codes = saved[0];
    const Tensor& x_scale = saved[1];
    const Tensor& x_mask = saved[2];
    const Tensor& w_codes = saved[3];
    const Tensor& w_scale = saved[4];
    const Tensor dy = grads[0].reshape({-1, grads[0].size(-1)});
    Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) {
      const Tensor w = dequantize_rows(w_codes, w_scale, dy.scalar_type());
      dx = mask_backward(dy.mm(w), x_mask)
               .view(ctx->saved_data["input_sizes"].toIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      const Tensor x = dequantize_rows(x_codes, x_scale, dy.scalar_type());
      dw = dy.t().mm(x);
    }
    // Edge 3 exists only when a bias was passed.
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3))
      db = dy.sum(0);
    return {dx, dw, Tensor(), db, Tensor()};
  }
};

Tensor quant_linear_autograd(
    const Tensor& input,
    const Tensor& weight,
    const Tensor& weight_scale,
    const std::optional<Tensor>& bias,
    c10::string_view format) {
  const bool needs_grad = at::GradMode::is_enabled() &&
      (input.requires_grad() || weight.requires_grad() ||
       (bias && bias->defined() && bias->requires_grad()));
  if (!needs_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return quant_linear(
        input,
        weight,
        weight_scale,
        bias,
        std::string_view(format.data(), format.size()));
  }
  return QuantLinearFunction::apply(input, weight, weight_scale, bias, format);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(qat, m) {
  // A matrix [rows, cols] to codes ("int8": [-128, 127]; "e4m3fn") with one
  // scale per row: dynamic (scale None: amax / 127 or amax / 448, as qat's
  // symmetric observers compute it) or given (one value, or one per row).
  m.def(
      "quantize_rows(Tensor input, Tensor? scale, str format) "
      "-> (Tensor codes, Tensor row_scale, Tensor mask)");
  // out[i, j] = a_scale[i] * b_scale[j] * sum_k a[i, k] b[j, k] + bias[j] on
  // codes of quantize_rows; int8 sums are exact.
  m.def(
      "qmatmul(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, "
      "ScalarType out_dtype) -> Tensor");
  // A linear layer on the codes of its per-token (dynamic) input and of its
  // weight (on the grid of weight_scale, one per output channel or one: a
  // weight quantizer's output), with the straight-through gradient of the
  // fake-quant composition.
  m.def(
      "quant_linear(Tensor input, Tensor weight, Tensor weight_scale, Tensor? bias, "
      "str format) -> Tensor");
}

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  m.impl("quantize_rows", quantize_rows_cpu);
  m.impl("qmatmul", qmatmul_cpu);
}

TORCH_LIBRARY_IMPL(qat, Meta, m) {
  m.impl("quantize_rows", quantize_rows_meta);
  m.impl("qmatmul", qmatmul_meta);
}

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("quant_linear", quant_linear_autograd);
}

TORCH_LIBRARY_IMPL(qat, CompositeExplicitAutograd, m) {
  m.impl("quant_linear", quant_linear_composite);
}

} // namespace qat::ops
