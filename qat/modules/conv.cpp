#include "qat/modules/conv.h"

#include <torch/nn/functional/batchnorm.h>
#include <torch/nn/functional/conv.h>

#include <stdexcept>

namespace qat {
namespace F = torch::nn::functional;

QuantConv2dImpl::QuantConv2dImpl(
    torch::nn::Conv2dOptions options_,
    LayerQuantSpecs specs_,
    std::optional<torch::nn::BatchNorm2dOptions> batch_norm_)
    : QuantizedLayer(std::move(specs_)),
      options(std::move(options_)),
      batch_norm_options(std::move(batch_norm_)) {
  if (!std::holds_alternative<torch::enumtype::kZeros>(
          options.padding_mode())) {
    throw std::invalid_argument("QuantConv2d: only zero padding is supported");
  }
  if (batch_norm_options &&
      batch_norm_options->num_features() != options.out_channels()) {
    throw std::invalid_argument(
        "QuantConv2d: BatchNorm2d has " +
        std::to_string(batch_norm_options->num_features()) +
        " features but the convolution has " +
        std::to_string(options.out_channels()) + " output channels");
  }
  reset();
}

void QuantConv2dImpl::reset() {
  // Parameters and initialisation of torch::nn::Conv2d, from a float module
  // built with the same options.
  torch::nn::Conv2d reference(options);
  weight = register_parameter("weight", reference->weight.detach().clone());
  bias = options.bias()
      ? register_parameter("bias", reference->bias.detach().clone())
      : register_parameter("bias", {}, /*requires_grad=*/false);
  if (batch_norm_options) {
    batch_norm = register_module(
        "batch_norm", torch::nn::BatchNorm2d(*batch_norm_options));
  }
  quantizers = LayerQuantizers::create(*this, specs);
}

torch::Tensor QuantConv2dImpl::conv(
    const torch::Tensor& x,
    const torch::Tensor& w,
    const torch::Tensor& b) const {
  return F::detail::conv2d(
      x,
      w,
      b,
      options.stride(),
      options.padding(),
      options.dilation(),
      options.groups());
}

torch::Tensor QuantConv2dImpl::bn_scale() const {
  return batch_norm->weight /
      torch::sqrt(batch_norm->running_var + batch_norm->options.eps());
}

torch::Tensor QuantConv2dImpl::folded_bias() const {
  const torch::Tensor gamma = bn_scale();
  const torch::Tensor b = bias.defined() ? bias : torch::zeros_like(gamma);
  return (b - batch_norm->running_mean) * gamma + batch_norm->bias;
}

torch::Tensor QuantConv2dImpl::quantizer_input() const {
  if (batch_norm.is_empty())
    return weight.flatten(1);
  return (weight * bn_scale().reshape({-1, 1, 1, 1})).flatten(1);
}

torch::Tensor QuantConv2dImpl::forward(const torch::Tensor& input) {
  const torch::Tensor x = LayerQuantizers::apply(quantizers.input, input);
  // The weight quantizer (or the converted weight) sees [out_channels,
  // everything else].
  auto served_weight = [&](const torch::Tensor& w) {
    return effective_weight(w.flatten(1)).view(w.sizes());
  };
  if (quantized_weight) {
    // Converted: the served conv, BN folded into its weight and bias.
    const torch::Tensor b = batch_norm.is_empty() ? bias : folded_bias();
    return LayerQuantizers::apply(
        quantizers.output, conv(x, served_weight(weight), b));
  }
  torch::Tensor y;
  const bool folds = !batch_norm.is_empty() && !quantizers.weight.is_empty();
  if (!folds || !quantizers.weight->fake_quant_enabled()) {
    // No weight quantization active: exactly torch::nn::Conv2d (bias inside
    // the convolution) followed by BatchNorm2d, the same bits. The weight
    // observer still sees the folded weight, the one that will be quantized
    // once fake-quant is on (calibration runs with it off).
    if (folds)
      served_weight(weight * bn_scale().view({-1, 1, 1, 1}));
    y = conv(x, folds ? weight : served_weight(weight), bias);
  } else {
    // Quantize the folded weight that will be served, then undo the scale so
    // that BN normalises as usual.
    const torch::Tensor gamma = bn_scale().reshape({1, -1, 1, 1});
    y = conv(x, served_weight(weight * gamma.view({-1, 1, 1, 1})), {}) / gamma;
    if (bias.defined())
      y = y + bias.reshape({1, -1, 1, 1});
  }
  if (!batch_norm.is_empty()) {
    const auto& bn = batch_norm->options;
    y = F::batch_norm(
        y,
        batch_norm->running_mean,
        batch_norm->running_var,
        F::BatchNormFuncOptions()
            .weight(batch_norm->weight)
            .bias(batch_norm->bias)
            .training(is_training() && !bn_frozen_)
            .momentum(bn.momentum().value_or(0.1))
            .eps(bn.eps()));
  }
  return LayerQuantizers::apply(quantizers.output, y);
}

torch::nn::Conv2d QuantConv2dImpl::to_float() const {
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(options).bias(
      options.bias() || !batch_norm.is_empty()));
  torch::NoGradGuard no_grad;
  conv->weight.copy_(quantizer_input().view(weight.sizes()));
  if (!batch_norm.is_empty())
    conv->bias.copy_(folded_bias());
  else if (bias.defined())
    conv->bias.copy_(bias);
  return conv;
}

void QuantConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::QuantConv2d(" << options.in_channels() << ", "
         << options.out_channels() << ", kernel_size=" << options.kernel_size()
         << ", stride=" << options.stride()
         << (batch_norm.is_empty() ? "" : ", batch_norm folded") << "; "
         << describe(specs) << ')';
}

namespace {

// torch::nn::Conv2d keeps its options as the generic ConvNdOptions<2>.
torch::nn::Conv2dOptions conv2d_options(
    const torch::nn::detail::ConvNdOptions<2>& o) {
  return torch::nn::Conv2dOptions(
             o.in_channels(), o.out_channels(), o.kernel_size())
      .stride(o.stride())
      .padding(o.padding())
      .dilation(o.dilation())
      .groups(o.groups())
      .bias(o.bias())
      .padding_mode(o.padding_mode());
}

} // namespace

QuantConv2d QuantConv2d::from_float(
    const torch::nn::Conv2d& conv,
    const LayerQuantSpecs& specs,
    const torch::nn::BatchNorm2d& batch_norm) {
  std::optional<torch::nn::BatchNorm2dOptions> bn_options;
  if (!batch_norm.is_empty())
    bn_options = batch_norm->options;
  QuantConv2d quantized(conv2d_options(conv->options), specs, bn_options);
  torch::NoGradGuard no_grad;
  quantized->weight.copy_(conv->weight);
  if (conv->bias.defined())
    quantized->bias.copy_(conv->bias);
  if (!batch_norm.is_empty()) {
    quantized->batch_norm->weight.copy_(batch_norm->weight);
    quantized->batch_norm->bias.copy_(batch_norm->bias);
    quantized->batch_norm->running_mean.copy_(batch_norm->running_mean);
    quantized->batch_norm->running_var.copy_(batch_norm->running_var);
    quantized->batch_norm->num_batches_tracked.copy_(
        batch_norm->num_batches_tracked);
  }
  return quantized;
}

} // namespace qat
