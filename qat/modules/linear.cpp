#include "qat/modules/linear.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <cmath>

#include "ops/ops.h"

namespace qat {
namespace {

// The qat::quant_linear format that computes exactly this layer's fake-quant
// forward and straight-through backward on the GPU's int8 or FP8 tensor
// cores, or nullptr where the layer takes the fake-quant path. That needs the
// input quantized per token, dynamic, as int8 [-128, 127] with scales amax /
// 127 or as e4m3 (what quant_linear does to it), and the weight quantizer's
// output on a grid quant_linear recovers exactly: the same family (signed symmetric integers of
// 8 bits or fewer, or e4m3), static scales per output channel or per tensor
// that are the quantizer's scale() (ste or lsq), both quantizers on, and no
// converted weight.
const char* quant_linear_format(
    const QuantLinearImpl& layer,
    const torch::Tensor& input) {
  const LayerQuantizers& q = layer.quantizers;
  const auto float_or_bf16 = [](const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat ||
        t.scalar_type() == torch::kBFloat16;
  };
  if (!input.is_cuda() || layer.quantized_weight || q.weight.is_empty() ||
      q.input.is_empty() || !float_or_bf16(input) ||
      !float_or_bf16(layer.weight)) {
    return nullptr;
  }
  const QuantSpec& w = q.weight->options().spec();
  const QuantSpec& x = q.input->options().spec();
  const Estimator estimator = q.weight->options().estimator();
  const bool weight_grid = !w.dynamic() && w.gguf() == GgufRule::none &&
      (estimator == Estimator::ste || estimator == Estimator::lsq) &&
      (w.granularity() == Granularity::per_tensor ||
       (w.granularity() == Granularity::per_channel &&
        (w.axis() == 0 || w.axis() == -2)));
  const bool token_input =
      x.dynamic() && x.granularity() == Granularity::per_token;
  if (!weight_grid || !token_input)
    return nullptr;
  const char* format = nullptr;
  if (w.format() == NumberFormat::int_ && w.is_signed() && w.symmetric() &&
      w.bits() <= 8 && x.format() == NumberFormat::int_ && x.is_signed() &&
      x.symmetric() && x.bits() == 8 && !x.narrow_range() &&
      x.symmetric_scale() == SymmetricScale::qmax &&
      x.gguf() == GgufRule::none) {
    format = "int8";
  } else if (
      w.format() == NumberFormat::fp8_e4m3 &&
      x.format() == NumberFormat::fp8_e4m3) {
    format = "e4m3fn";
  }
  // Checked last: each switch is read back from the device.
  if (!format || !q.weight->fake_quant_enabled() ||
      !q.input->fake_quant_enabled()) {
    return nullptr;
  }
  return format;
}

} // namespace

QuantLinearImpl::QuantLinearImpl(
    torch::nn::LinearOptions options_,
    LayerQuantSpecs specs_)
    : QuantizedLayer(std::move(specs_)), options(std::move(options_)) {
  reset();
}

void QuantLinearImpl::reset() {
  // torch::nn::Linear's parameters and initialisation.
  weight = register_parameter(
      "weight", torch::empty({options.out_features(), options.in_features()}));
  bias = options.bias()
      ? register_parameter("bias", torch::empty({options.out_features()}))
      : register_parameter("bias", {}, /*requires_grad=*/false);
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5));
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(options.in_features());
    torch::nn::init::uniform_(bias, -bound, bound);
  }
  quantizers = LayerQuantizers::create(*this, specs);
}

torch::Tensor QuantLinearImpl::forward(const torch::Tensor& input) {
  if (input_tap)
    input_tap(input);
  if (const char* format = quant_linear_format(*this, input)) {
    // The weight quantizer observes and fake-quantizes as below (and its
    // backward follows quant_linear's); quant_linear quantizes the input as
    // the dynamic input quantizer would.
    const torch::Tensor w = effective_weight(weight);
    const torch::Tensor y = ops::quant_linear(
        input,
        w,
        quantizers.weight->scale().detach(),
        bias.defined() ? std::optional<torch::Tensor>(bias) : std::nullopt,
        format);
    return LayerQuantizers::apply(quantizers.output, y);
  }
  const torch::Tensor x = LayerQuantizers::apply(quantizers.input, input);
  const torch::Tensor w = effective_weight(weight);
  return LayerQuantizers::apply(
      quantizers.output, torch::nn::functional::linear(x, w, bias));
}

torch::nn::Linear QuantLinearImpl::to_float() const {
  torch::nn::Linear linear(options);
  torch::NoGradGuard no_grad;
  linear->weight.copy_(weight);
  if (bias.defined())
    linear->bias.copy_(bias);
  return linear;
}

void QuantLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::QuantLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features()
         << ", bias=" << (options.bias() ? "true" : "false") << "; "
         << describe(specs) << ')';
}

QuantLinear QuantLinear::from_float(
    const torch::nn::Linear& linear,
    const LayerQuantSpecs& specs) {
  QuantLinear quantized(linear->options, specs);
  torch::NoGradGuard no_grad;
  quantized->weight.copy_(linear->weight);
  if (linear->bias.defined())
    quantized->bias.copy_(linear->bias);
  return quantized;
}

} // namespace qat
