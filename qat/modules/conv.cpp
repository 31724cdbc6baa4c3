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
  if (!batch_norm.is_empty() && batch_stats_gather_ && is_training() &&
      !bn_frozen_) {
    y = synchronized_batch_norm(y);
  } else if (!batch_norm.is_empty()) {
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

/* Synchronous BN. Each rank r has n_r elements per channel with mean m_r and
 * squared deviations M_r; the global batch has (Chan et al.'s pairwise
 * update, as torch.nn.SyncBatchNorm combines its ranks)
 *   n = sum n_r,  mean = sum n_r m_r / n,
 *   var = sum (M_r + n_r (m_r - mean)^2) / n
 * (biased, as BN normalises; the running variance gets n / (n - 1) var).
 * The statistics pass through the gather, whose backward sums each rank's
 * gradient with respect to them: every rank's loss depends on every shard
 * through the shared statistics, and with the data-parallel average of the
 * parameter gradients that is the gradient of the mean loss over the global
 * batch.
 */
torch::Tensor QuantConv2dImpl::synchronized_batch_norm(const torch::Tensor& y) {
  const auto& bn = batch_norm->options;
  const int64_t channels = y.size(1);
  const torch::Tensor y32 = y.to(torch::kFloat); // counts exact under bf16
  const torch::Tensor local_mean = y32.mean({0, 2, 3});
  const torch::Tensor deviations = y32 - local_mean.view({1, -1, 1, 1});
  const auto local = torch::stack(
      {torch::full({channels}, y.numel() / channels, y32.options()),
       local_mean,
       (deviations * deviations).sum({0, 2, 3})});
  const torch::Tensor ranks = batch_stats_gather_(local); // [ranks, 3, C]
  const torch::Tensor n_r = ranks.select(1, 0), m_r = ranks.select(1, 1);
  const torch::Tensor count = n_r.sum(0);
  const torch::Tensor mean = (n_r * m_r).sum(0) / count;
  const torch::Tensor var =
      (ranks.select(1, 2) + n_r * (m_r - mean).square()).sum(0) / count;
  {
    torch::NoGradGuard no_grad;
    const double momentum = bn.momentum().value_or(0.1);
    batch_norm->running_mean.mul_(1 - momentum).add_(mean.detach() * momentum);
    batch_norm->running_var.mul_(1 - momentum)
        .add_(var.detach() * count / (count - 1) * momentum);
  }
  const auto shape = std::vector<int64_t>{1, channels, 1, 1};
  const torch::Tensor scale = batch_norm->weight * torch::rsqrt(var + bn.eps());
  return ((y32 - mean.view(shape)) * scale.view(shape) +
          batch_norm->bias.view(shape))
      .to(y.scalar_type());
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
