#include "trainers/models/classifiers.h"

#include <torch/nn/modules/container/sequential.h>
#include <torch/torch.h>

#include <functional>
#include <numeric>
#include <stdexcept>

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

std::string images_input(
    onnx::GraphBuilder& graph,
    const std::vector<int64_t>& image_shape) {
  std::vector<onnx::Dim> shape{"batch"};
  shape.insert(shape.end(), image_shape.begin(), image_shape.end());
  return graph.add_input("images", onnx::DataType::float32, shape);
}

void logits_output(
    onnx::GraphBuilder& graph,
    const std::string& logits,
    const QuantLinear& head) {
  graph.add_output(
      logits,
      "logits",
      onnx::DataType::float32,
      {"batch", head->options.out_features()});
}

} // namespace

void save_onnx(
    const ImageClassifier& model,
    const std::vector<int64_t>& image_shape,
    const std::string& path) {
  onnx::GraphBuilder graph(model.name());
  model.export_onnx(graph, image_shape);
  graph.save(path);
}

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

void MlpImpl::export_onnx(
    onnx::GraphBuilder& graph,
    const std::vector<int64_t>& image_shape) const {
  const int64_t in_features =
      (fcs_.empty() ? head_ : fcs_.front())->options.in_features();
  const int64_t pixels = std::accumulate(
      image_shape.begin(),
      image_shape.end(),
      int64_t{1},
      std::multiplies<int64_t>());
  if (pixels != in_features) {
    throw std::invalid_argument(
        "Mlp ONNX export: images of " + std::to_string(pixels) +
        " values, but the first layer reads " + std::to_string(in_features));
  }
  std::string x = graph.add_node(
      "Flatten", {images_input(graph, image_shape)}, "flatten", {{"axis", 1}});
  for (size_t i = 0; i < fcs_.size(); ++i) {
    const std::string index = std::to_string(i);
    x = onnx::add_linear(graph, "fc" + index, *fcs_[i], x);
    x = onnx::add_activation(graph, "act" + index, *acts_[i], x);
  }
  logits_output(graph, onnx::add_linear(graph, "head", *head_, x), head_);
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

std::string ResidualBlockImpl::export_onnx(
    onnx::GraphBuilder& graph,
    const std::string& name,
    const std::string& x) const {
  const std::string skip = shortcut_.is_empty()
      ? x
      : onnx::add_conv2d(graph, name + ".shortcut", *shortcut_, x);
  std::string y = onnx::add_conv2d(graph, name + ".conv1", *conv1_, x);
  y = onnx::add_activation(graph, name + ".act1", *act1_, y);
  y = onnx::add_conv2d(graph, name + ".conv2", *conv2_, y);
  y = graph.add_node("Add", {y, skip}, name + ".add");
  return onnx::add_activation(graph, name + ".act2", *act2_, y);
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

void ResNetImpl::export_onnx(
    onnx::GraphBuilder& graph,
    const std::vector<int64_t>& image_shape) const {
  std::string x = images_input(graph, image_shape);
  x = onnx::add_conv2d(graph, "stem", *stem_, x);
  x = onnx::add_activation(graph, "stem_act", *stem_act_, x);
  for (size_t s = 0; s < stages_->size(); ++s) {
    const auto& stage = *(*stages_)[s]->as<torch::nn::ModuleList>();
    for (size_t b = 0; b < stage.size(); ++b) {
      x = stage[b]->as<ResidualBlock>()->export_onnx(
          graph, "stages." + std::to_string(s) + "." + std::to_string(b), x);
    }
  }
  // features(): the mean over height and width.
  x = graph.add_node("GlobalAveragePool", {x}, "pool");
  x = graph.add_node("Flatten", {x}, "features", {{"axis", 1}});
  logits_output(graph, onnx::add_linear(graph, "head", *head_, x), head_);
}

} // namespace qat::models
