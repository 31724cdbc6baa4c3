#include "trainers/models/classifiers.h"

#include <torch/nn/modules/container/sequential.h>
#include <torch/torch.h>

namespace qat::models {
namespace {

QuantConv2d conv_bn(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return QuantConv2d(
      torch::nn::Conv2dOptions(in, out, kernel)
          .stride(stride)
          .padding(kernel / 2)
          .bias(false),
      LayerQuantSpecs{},
      torch::nn::BatchNorm2dOptions(out));
}

QuantActivation relu() {
  return QuantActivation(ActivationKind::relu, LayerQuantSpecs{});
}

} // namespace

MlpImpl::MlpImpl(MlpOptions options) {
  int64_t in = options.in_features();
  for (size_t i = 0; i < options.hidden().size(); ++i) {
    const int64_t out = options.hidden()[i];
    fcs_.push_back(register_module(
        "fc" + std::to_string(i),
        QuantLinear(torch::nn::LinearOptions(in, out), LayerQuantSpecs{})));
    acts_.push_back(register_module("act" + std::to_string(i), relu()));
    in = out;
  }
  head_ = register_module(
      "head",
      QuantLinear(
          torch::nn::LinearOptions(in, options.classes()), LayerQuantSpecs{}));
}

torch::Tensor MlpImpl::features(const torch::Tensor& images) {
  torch::Tensor x = images.flatten(1);
  for (size_t i = 0; i < fcs_.size(); ++i)
    x = acts_[i](fcs_[i](x));
  return x;
}

torch::Tensor MlpImpl::classify(const torch::Tensor& features) {
  return head_(features);
}

ResidualBlockImpl::ResidualBlockImpl(int64_t in, int64_t out, int64_t stride) {
  conv1_ = register_module("conv1", conv_bn(in, out, 3, stride));
  act1_ = register_module("act1", relu());
  conv2_ = register_module("conv2", conv_bn(out, out, 3, 1));
  if (stride != 1 || in != out)
    shortcut_ = register_module("shortcut", conv_bn(in, out, 1, stride));
  act2_ = register_module("act2", relu());
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x) {
  const torch::Tensor skip = shortcut_.is_empty() ? x : shortcut_(x);
  return act2_(conv2_(act1_(conv1_(x))) + skip);
}

ResNetImpl::ResNetImpl(ResNetOptions options) {
  const auto& widths = options.widths();
  stem_ = register_module(
      "stem", conv_bn(options.in_channels(), widths.at(0), 3, 1));
  stem_act_ = register_module("stem_act", relu());
  stages_ = register_module("stages", torch::nn::ModuleList());
  int64_t in = widths[0];
  for (size_t s = 0; s < widths.size(); ++s) {
    torch::nn::ModuleList stage;
    for (int64_t b = 0; b < options.blocks_per_stage(); ++b) {
      const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
      stage->push_back(ResidualBlock(in, widths[s], stride));
      in = widths[s];
    }
    stages_->push_back(stage);
  }
  head_ = register_module(
      "head",
      QuantLinear(
          torch::nn::LinearOptions(in, options.classes()), LayerQuantSpecs{}));
}

torch::Tensor ResNetImpl::features(const torch::Tensor& images) {
  torch::Tensor x = stem_act_(stem_(images));
  for (const auto& stage : *stages_) {
    for (const auto& block : *stage->as<torch::nn::ModuleList>())
      x = block->as<ResidualBlock>()->forward(x);
  }
  return x.mean({2, 3});
}

torch::Tensor ResNetImpl::classify(const torch::Tensor& features) {
  return head_(features);
}

} // namespace qat::models
