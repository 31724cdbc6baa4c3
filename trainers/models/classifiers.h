// Image classifiers built from qat's layer modules (float until prepared):
//
//   Mlp      flatten -> [fc{i} -> act{i}]* -> head
//   ResNet   stem (conv+BN+ReLU) -> stages of residual blocks (conv+BN+ReLU,
//            conv+BN, identity or 1x1 conv+BN shortcut, ReLU) -> global
//            average pool -> head; every conv is a QuantConv2d with its
//            BatchNorm folded in.
//
// Layer names (what QuantConfig rules match): "fc0", "act0", ..., "head" for
// the MLP; "stem", "stages.1.0.conv1", "stages.1.0.shortcut", ..., "head" for
// the ResNet. The ONNX export names its values after them.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <string>
#include <vector>

#include "qat/export/onnx.h"
#include "qat/modules/activation.h"
#include "qat/modules/conv.h"
#include "qat/modules/linear.h"

namespace qat::models {

// What the trainer needs of a classifier: the features the head reads (the
// hidden state that distillation can match) and the head.
class ImageClassifier : public torch::nn::Module {
 public:
  virtual torch::Tensor features(const torch::Tensor& images) = 0;
  virtual torch::Tensor classify(const torch::Tensor& features) = 0;
  torch::Tensor forward(const torch::Tensor& images) {
    return classify(features(images));
  }
  // The served model (converted with qat::convert, in eval mode) as an ONNX
  // graph: input "images" [batch, image_shape...] (float32), output
  // "logits" [batch, classes].
  virtual void export_onnx(
      onnx::GraphBuilder& graph,
      const std::vector<int64_t>& image_shape) const = 0;
};

// Writes `model` as an ONNX file (ImageClassifier::export_onnx) for images of
// `image_shape` ([channels, height, width]), atomically.
void save_onnx(
    const ImageClassifier& model,
    const std::vector<int64_t>& image_shape,
    const std::string& path);

struct MlpOptions {
  TORCH_ARG(int64_t, in_features) = 28 * 28;
  TORCH_ARG(std::vector<int64_t>, hidden) = std::vector<int64_t>{256, 128};
  TORCH_ARG(int64_t, classes) = 10;
};

class MlpImpl : public ImageClassifier {
 public:
  explicit MlpImpl(MlpOptions options = {});
  torch::Tensor features(const torch::Tensor& images) override;
  torch::Tensor classify(const torch::Tensor& features) override;
  void export_onnx(
      onnx::GraphBuilder& graph,
      const std::vector<int64_t>& image_shape) const override;

 private:
  std::vector<QuantLinear> fcs_;
  std::vector<QuantActivation> acts_;
  QuantLinear head_{nullptr};
};
TORCH_MODULE(Mlp);

struct ResNetOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  // Channels of each stage; every stage after the first halves the size.
  TORCH_ARG(std::vector<int64_t>, widths) = std::vector<int64_t>{16, 32};
  TORCH_ARG(int64_t, blocks_per_stage) = 1;
  TORCH_ARG(int64_t, classes) = 10;
};

class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int64_t in, int64_t out, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);
  // The block on `x` in an ONNX graph, its values named after `name`.
  std::string export_onnx(
      onnx::GraphBuilder& graph,
      const std::string& name,
      const std::string& x) const;

 private:
  QuantConv2d conv1_{nullptr}, conv2_{nullptr}, shortcut_{nullptr};
  QuantActivation act1_{nullptr}, act2_{nullptr};
};
TORCH_MODULE(ResidualBlock);

class ResNetImpl : public ImageClassifier {
 public:
  explicit ResNetImpl(ResNetOptions options = {});
  torch::Tensor features(const torch::Tensor& images) override;
  torch::Tensor classify(const torch::Tensor& features) override;
  void export_onnx(
      onnx::GraphBuilder& graph,
      const std::vector<int64_t>& image_shape) const override;

 private:
  QuantConv2d stem_{nullptr};
  QuantActivation stem_act_{nullptr};
  torch::nn::ModuleList stages_{nullptr};
  QuantLinear head_{nullptr};
};
TORCH_MODULE(ResNet);

} // namespace qat::models
