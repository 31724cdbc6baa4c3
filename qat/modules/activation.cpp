#include "qat/modules/activation.h"

#include <torch/nn/functional/activation.h>

#include <stdexcept>

namespace qat {
namespace {

const char* kind_name(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::identity:
      return "identity";
    case ActivationKind::relu:
      return "relu";
    case ActivationKind::gelu:
      return "gelu";
    case ActivationKind::silu:
      return "silu";
  }
  return "?";
}

} // namespace

QuantActivationImpl::QuantActivationImpl(
    ActivationKind kind_,
    LayerQuantSpecs specs_)
    : QuantizedLayer(std::move(specs_)), kind(kind_) {
  check_specs(specs);
  reset();
}

void QuantActivationImpl::check_specs(const LayerQuantSpecs& s) const {
  if (s.weight) {
    throw std::invalid_argument(
        std::string("QuantActivation(") + kind_name(kind) +
        "): an activation has no weight to quantize");
  }
}

void QuantActivationImpl::reset() {
  quantizers = LayerQuantizers::create(*this, specs);
}

torch::Tensor QuantActivationImpl::forward(const torch::Tensor& input) {
  namespace F = torch::nn::functional;
  const torch::Tensor x = LayerQuantizers::apply(quantizers.input, input);
  torch::Tensor y;
  switch (kind) {
    case ActivationKind::identity:
      y = x;
      break;
    case ActivationKind::relu:
      y = F::relu(x);
      break;
    case ActivationKind::gelu:
      y = F::gelu(x);
      break;
    case ActivationKind::silu:
      y = F::silu(x);
      break;
  }
  return LayerQuantizers::apply(quantizers.output, y);
}

void QuantActivationImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::QuantActivation(" << kind_name(kind) << "; "
         << describe(specs) << ')';
}

} // namespace qat
