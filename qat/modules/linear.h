// QuantLinear: torch::nn::Linear with fake-quantized weight and optional
// input / output activation quantizers. On CUDA, with int8 or e4m3 weights
// and per-token dynamic int8 / e4m3 inputs (the w8a8_int8, w4a8 and fp8_e4m3
// presets), the forward runs on the int8 / FP8 tensor cores
// (qat::ops::quant_linear) with the fake-quant path's results up to float
// summation order.
//
// Example:
//   torch::nn::Linear fc(256, 64);
//   auto qfc = qat::QuantLinear::from_float(fc, qat::preset("w4a16_g128"));
//   auto y = qfc(x);                 // fake-quantized forward, trainable
//   torch::nn::Linear back = qfc->to_float();
#pragma once

#include <torch/nn/modules/linear.h>

#include "qat/modules/quantizers.h"

namespace qat {

class QuantLinearImpl : public torch::nn::Cloneable<QuantLinearImpl>,
                        public QuantizedLayer {
 public:
  QuantLinearImpl(torch::nn::LinearOptions options, LayerQuantSpecs specs);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);
  // A float Linear holding this layer's (trained) float weights.
  torch::nn::Linear to_float() const;
  void pretty_print(std::ostream& stream) const override;
  const char* layer_type() const override {
    return "Linear";
  }

  torch::nn::LinearOptions options;
  torch::Tensor weight, bias;

 protected:
  torch::nn::Module& layer_module() override {
    return *this;
  }
  torch::Tensor quantizer_input() const override {
    return weight;
  }
};

class QuantLinear : public torch::nn::ModuleHolder<QuantLinearImpl> {
 public:
  using torch::nn::ModuleHolder<QuantLinearImpl>::ModuleHolder;
  // A QuantLinear with a copy of linear's weights.
  static QuantLinear from_float(
      const torch::nn::Linear& linear,
      const LayerQuantSpecs& specs);
};

} // namespace qat
