// The quantizers a quantized module owns, built from LayerQuantSpecs: each one
// a registered FakeQuantizer submodule, or empty (that tensor stays in float).
#pragma once

#include <torch/nn/module.h>

#include <functional>

#include "qat/convert.h"
#include "qat/modules/layer_specs.h"

namespace qat {

struct LayerQuantizers {
  FakeQuantizer weight{nullptr};
  FakeQuantizer input{nullptr};
  FakeQuantizer output{nullptr};

  // Registers "weight_quantizer", "input_quantizer", "output_quantizer" on
  // owner for the specs that are set (replacing those there; see
  // replace_quantizer), on `device` when given.
  static LayerQuantizers create(
      torch::nn::Module& owner,
      const LayerQuantSpecs& specs,
      std::optional<torch::Device> device = std::nullopt);

  // x through the quantizer, or x itself when there is none.
  static torch::Tensor apply(FakeQuantizer& quantizer, const torch::Tensor& x);
};

// The part every quantized module shares: its specs, its quantizers, and the
// way prepare() replaces them. A module built with empty specs computes
// exactly what the float module computes, so models are built from quantized
// modules from the start and prepare() attaches quantizers by name.
class QuantizedLayer {
 public:
  virtual ~QuantizedLayer() = default;
  // What QuantConfig rules match on: "Linear", "Conv2d", "Embedding",
  // "Activation".
  virtual const char* layer_type() const = 0;
  // Throws std::invalid_argument when the specs do not fit the layer (a
  // format the layer cannot use, weight groups that do not divide its shape).
  void check_fit(const LayerQuantSpecs& specs) const;
  // Replaces the quantizers (unregistering the old ones) after check_fit; the
  // new ones live on the device of the layer's parameters.
  void set_specs(LayerQuantSpecs new_specs);

  // convert(): quantizes the weight with the weight quantizer's scale and
  // zero point (observing the weight first if it never was); from then on
  // the forward dequantizes quantized_weight instead of fake-quantizing.
  void convert_weight();
  // The tensor the weight quantizer sees (the folded weight of a Conv+BN);
  // undefined for layers without a weight.
  torch::Tensor weight_to_quantize() const {
    return quantizer_input();
  }
  // The weight the forward computes with: dequantized after convert(), else
  // `w` through the weight quantizer (if any).
  torch::Tensor effective_weight(const torch::Tensor& w);

  LayerQuantSpecs specs;
  LayerQuantizers quantizers;
  std::optional<QuantizedWeight> quantized_weight;
  // While set, called with every input the forward sees (calibration
  // statistics such as GPTQ's Hessian; Linear layers).
  std::function<void(const torch::Tensor&)> input_tap;

 protected:
  explicit QuantizedLayer(LayerQuantSpecs initial)
      : specs(std::move(initial)) {}
  virtual void check_specs(const LayerQuantSpecs&) const {}
  virtual torch::nn::Module& layer_module() = 0;
  // The tensor the weight quantizer sees (undefined: cannot be converted).
  virtual torch::Tensor quantizer_input() const {
    return {};
  }
};

// Replaces `owner`'s quantizer submodule `name` (unregistering the one there,
// if any) by one built from `options`, moved to `device` when given; an empty
// quantizer for nullopt.
FakeQuantizer replace_quantizer(
    torch::nn::Module& owner,
    const std::string& name,
    const std::optional<FakeQuantizerOptions>& options,
    std::optional<torch::Device> device = std::nullopt);

// The parameters and buffers of a quantizer (none for an empty one), each
// named `prefix` + its own name: what saving and exporting skip or keep.
std::vector<std::pair<std::string, torch::Tensor>> quantizer_state(
    const std::string& prefix,
    const FakeQuantizer& quantizer);

// Every quantized layer of `model` (below it) with its name, in module order.
std::vector<std::pair<std::string, QuantizedLayer*>> quantized_layers(
    torch::nn::Module& model);

} // namespace qat
