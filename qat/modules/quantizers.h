// The quantizers a quantized module owns, built from LayerQuantSpecs: each one
// a registered FakeQuantizer submodule, or empty (that tensor stays in float).
#pragma once

#include <torch/nn/module.h>

#include "qat/modules/layer_specs.h"

namespace qat {

struct LayerQuantizers {
  FakeQuantizer weight{nullptr};
  FakeQuantizer input{nullptr};
  FakeQuantizer output{nullptr};

  // Registers "weight_quantizer", "input_quantizer", "output_quantizer" on
  // owner for the specs that are set.
  static LayerQuantizers create(
      torch::nn::Module& owner,
      const LayerQuantSpecs& specs);

  // x through the quantizer, or x itself when there is none.
  static torch::Tensor apply(FakeQuantizer& quantizer, const torch::Tensor& x);
};

} // namespace qat
