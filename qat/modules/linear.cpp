#include "qat/modules/linear.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <cmath>

namespace qat {

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
