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

void QuantizedLayer::set_specs(LayerQuantSpecs new_specs) {
  check_specs(new_specs);
  torch::nn::Module& module = layer_module();
  const auto children = module.named_children();
  for (const char* name :
       {"weight_quantizer", "input_quantizer", "output_quantizer"}) {
    if (children.contains(name))
      module.unregister_module(name);
  }
  specs = std::move(new_specs);
  quantizers = LayerQuantizers::create(module, specs);
  const auto params = module.parameters(/*recurse=*/false);
  if (!params.empty()) {
    for (FakeQuantizer* q :
         {&quantizers.weight, &quantizers.input, &quantizers.output}) {
      if (!q->is_empty())
        (*q)->to(params.front().device());
    }
  }
}

} // namespace qat
