#include "qat/modules/quantizers.h"

namespace qat {
namespace {

FakeQuantizer make(
    torch::nn::Module& owner,
    const char* name,
    const std::optional<FakeQuantizerOptions>& options) {
  if (!options)
    return FakeQuantizer(nullptr);
  return owner.register_module(name, FakeQuantizer(*options));
}

} // namespace

LayerQuantizers LayerQuantizers::create(
    torch::nn::Module& owner,
    const LayerQuantSpecs& specs) {
  return {
      make(owner, "weight_quantizer", specs.weight),
      make(owner, "input_quantizer", specs.input),
      make(owner, "output_quantizer", specs.output)};
}

torch::Tensor LayerQuantizers::apply(
    FakeQuantizer& quantizer,
    const torch::Tensor& x) {
  return quantizer.is_empty() ? x : quantizer(x);
}

} // namespace qat
