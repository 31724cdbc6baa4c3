#include "qat/modules/embedding.h"

#include <torch/nn/functional/embedding.h>
#include <torch/nn/init.h>

#include <stdexcept>

namespace qat {

QuantEmbeddingImpl::QuantEmbeddingImpl(
    torch::nn::EmbeddingOptions options_,
    LayerQuantSpecs specs_)
    : QuantizedLayer(std::move(specs_)), options(std::move(options_)) {
  check_specs(specs);
  reset();
}

void QuantEmbeddingImpl::check_specs(const LayerQuantSpecs& s) const {
  if (s.input) {
    throw std::invalid_argument(
        "QuantEmbedding: its input is indices, which are not quantized; "
        "give a weight (and optionally an output) spec only");
  }
}

void QuantEmbeddingImpl::reset() {
  // torch::nn::Embedding's parameter and initialisation.
  weight = register_parameter(
      "weight",
      torch::empty({options.num_embeddings(), options.embedding_dim()}));
  torch::nn::init::normal_(weight);
  if (options.padding_idx()) {
    torch::NoGradGuard no_grad;
    weight[*options.padding_idx()].fill_(0);
  }
  quantizers = LayerQuantizers::create(*this, specs);
}

torch::Tensor QuantEmbeddingImpl::forward(const torch::Tensor& indices) {
  const torch::Tensor table = effective_weight(weight);
  return LayerQuantizers::apply(
      quantizers.output,
      torch::nn::functional::embedding(
          indices,
          table,
          torch::nn::functional::EmbeddingFuncOptions()
              .padding_idx(options.padding_idx())
              .max_norm(options.max_norm())
              .norm_type(options.norm_type())
              .scale_grad_by_freq(options.scale_grad_by_freq())
              .sparse(options.sparse())));
}

torch::nn::Embedding QuantEmbeddingImpl::to_float() const {
  torch::nn::Embedding embedding(options);
  torch::NoGradGuard no_grad;
  embedding->weight.copy_(weight);
  return embedding;
}

void QuantEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::QuantEmbedding(num_embeddings=" << options.num_embeddings()
         << ", embedding_dim=" << options.embedding_dim() << "; "
         << describe(specs) << ')';
}

QuantEmbedding QuantEmbedding::from_float(
    const torch::nn::Embedding& embedding,
    const LayerQuantSpecs& specs) {
  QuantEmbedding quantized(embedding->options, specs);
  torch::NoGradGuard no_grad;
  quantized->weight.copy_(embedding->weight);
  return quantized;
}

} // namespace qat
