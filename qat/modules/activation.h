// QuantActivation: an activation function with an output quantizer (and an
// optional input quantizer), for the activations between quantized layers.
#pragma once

#include <torch/nn/modules/container/any.h>

#include "qat/modules/quantizers.h"

namespace qat {

enum class ActivationKind { identity, relu, gelu, silu };

class QuantActivationImpl : public torch::nn::Cloneable<QuantActivationImpl>,
                            public QuantizedLayer {
 public:
  QuantActivationImpl(ActivationKind kind, LayerQuantSpecs specs);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);
  void pretty_print(std::ostream& stream) const override;
  const char* layer_type() const override {
    return "Activation";
  }

  ActivationKind kind;

 protected:
  torch::nn::Module& layer_module() override {
    return *this;
  }
  void check_specs(const LayerQuantSpecs& specs) const override;
};
TORCH_MODULE(QuantActivation);

} // namespace qat
