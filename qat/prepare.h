// prepare / calibrate: attach quantizers to a model's layers by name, and
// calibrate their observers (that alone, with round to nearest, is
// post-training quantization).
//
// Models are built from qat's layer modules (QuantLinear, QuantConv2d,
// QuantEmbedding, QuantActivation), which compute exactly what the float
// modules compute while they have no quantizers; prepare() gives each layer
// the quantizers of the first rule that matches it. (A typed LibTorch member
// such as `torch::nn::Linear fc` cannot be swapped from outside the model, so
// prepare() refuses models that hold float layers and says which.)
//
// Example:
//   qat::QuantConfig config{{
//       qat::QuantRule::skip("lm_head"),
//       qat::QuantRule::quantize("re:layers\\.[0-9]+\\..*", qat::preset("w4a16_g128"),
//                                "Linear"),
//   }};
//   auto report = qat::prepare(*model, config);
//   std::cout << report.table();
//   qat::calibrate(*model, [&] { for (auto& b : batches) model->forward(b); });
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "qat/modules/layer_specs.h"

namespace qat {

struct QuantRule {
  // A glob on the layer's dotted name ('*' also crosses dots, as fnmatch), or
  // "re:" followed by an ECMAScript regex that must match the whole name.
  std::string pattern;
  // "Linear", "Conv2d", "Embedding", "Activation", alternatives joined by
  // '|' ("Conv2d|Linear"), or empty for any.
  std::string layer_type;
  // The layer's quantizers; nullopt keeps the layer in float (skip).
  std::optional<LayerQuantSpecs> specs;

  static QuantRule quantize(
      std::string pattern,
      LayerQuantSpecs specs,
      std::string layer_type = "");
  static QuantRule skip(std::string pattern, std::string layer_type = "");
};

// Ordered rules: the first that matches a layer decides it; a layer that no
// rule matches stays in float.
struct QuantConfig {
  std::vector<QuantRule> rules;
  // The keys and values of every attention layer (qat/modules/kv_cache.h),
  // as its KV cache stores them; nullopt keeps them in float.
  std::optional<FakeQuantizerOptions> kv_cache = std::nullopt;
};

struct PreparedLayer {
  std::string name;
  std::string layer_type;
  std::string quantization; // describe(specs), or "float"
  int rule = -1;            // index of the deciding rule, -1 for none
};

struct PrepareReport {
  std::vector<PreparedLayer> layers;
  // One line per layer: name, type, deciding rule, quantizers.
  std::string table() const;
};

// Gives every qat layer of `model` the quantizers its first matching rule
// names (or none). Throws std::invalid_argument, before changing anything,
// for an invalid regex or layer type, a rule that matches no layer (with the
// layers listed), or a float LibTorch layer (Linear, Conv2d, Embedding) that
// cannot be quantized.
PrepareReport prepare(torch::nn::Module& model, const QuantConfig& config);

// Switches every FakeQuantizer of the model.
void set_observers(torch::nn::Module& model, bool enabled);
void set_fake_quant(torch::nn::Module& model, bool enabled);

// Runs `run_batches` (forward passes, without gradients) with observers on and
// fake-quant off, then freezes the observers and turns fake-quant on: the
// model is then post-training quantized, ready to evaluate or fine-tune.
void calibrate(
    torch::nn::Module& model,
    const std::function<void()>& run_batches);

} // namespace qat
