// QuantEmbedding: torch::nn::Embedding with a fake-quantized table (per row:
// per_channel axis 0, or groups along the embedding dimension) and an optional
// output quantizer.
#pragma once

#include <torch/nn/modules/embedding.h>

#include "qat/modules/quantizers.h"

namespace qat {

class QuantEmbeddingImpl : public torch::nn::Cloneable<QuantEmbeddingImpl>,
                           public QuantizedLayer {
 public:
  QuantEmbeddingImpl(
      torch::nn::EmbeddingOptions options,
      LayerQuantSpecs specs);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& indices);
  torch::nn::Embedding to_float() const;
  void pretty_print(std::ostream& stream) const override;
  const char* layer_type() const override {
    return "Embedding";
  }

  torch::nn::EmbeddingOptions options;
  torch::Tensor weight;

 protected:
  torch::nn::Module& layer_module() override {
    return *this;
  }
  torch::Tensor quantizer_input() const override {
    return weight;
  }
  void check_specs(const LayerQuantSpecs& specs) const override;
};

class QuantEmbedding : public torch::nn::ModuleHolder<QuantEmbeddingImpl> {
 public:
  using torch::nn::ModuleHolder<QuantEmbeddingImpl>::ModuleHolder;
  static QuantEmbedding from_float(
      const torch::nn::Embedding& embedding,
      const LayerQuantSpecs& specs);
};

} // namespace qat
