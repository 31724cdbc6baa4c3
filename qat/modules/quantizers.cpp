#include "qat/modules/quantizers.h"

#include <sstream>

#include "kernels/ref/microscale_ref.h"
#include "qat/format.h"

namespace qat {

FakeQuantizer replace_quantizer(
    torch::nn::Module& owner,
    const std::string& name,
    const std::optional<FakeQuantizerOptions>& options,
    std::optional<torch::Device> device) {
  if (owner.named_children().contains(name))
    owner.unregister_module(name);
  if (!options)
    return FakeQuantizer(nullptr);
  FakeQuantizer quantizer =
      owner.register_module(name, FakeQuantizer(*options));
  if (device)
    quantizer->to(*device);
  return quantizer;
}

LayerQuantizers LayerQuantizers::create(
    torch::nn::Module& owner,
    const LayerQuantSpecs& specs,
    std::optional<torch::Device> device) {
  return {
      replace_quantizer(owner, "weight_quantizer", specs.weight, device),
      replace_quantizer(owner, "input_quantizer", specs.input, device),
      replace_quantizer(owner, "output_quantizer", specs.output, device)};
}

torch::Tensor LayerQuantizers::apply(
    FakeQuantizer& quantizer,
    const torch::Tensor& x) {
  return quantizer.is_empty() ? x : quantizer(x);
}

void QuantizedLayer::convert_weight() {
  const torch::Tensor w = quantizer_input();
  if (!w.defined()) {
    throw std::invalid_argument(
        std::string("convert: a ") + layer_type() +
        " layer of this kind cannot be converted yet");
  }
  FakeQuantizerImpl& fq = *quantizers.weight;
  const QuantSpec& spec = fq.options().spec();
  torch::NoGradGuard no_grad;
  QParams q{fq.scale(), fq.zero_point()};
  if (spec.gguf() != GgufRule::none) {
    quantized_weight =
        QuantizedWeight::quantize(w, spec, fq.gguf_representation(), {});
    return;
  }
  if (spec.dynamic()) {
    q = dynamic_qparams(w, spec);
  } else if (!fq.observer()->has_observed()) {
    fq.forward(w);
    q = {fq.scale(), fq.zero_point()};
  }
  quantized_weight = QuantizedWeight::quantize(
      w, spec, q.scale, integer_zero_point(q.zero_point, spec));
}

torch::Tensor QuantizedLayer::effective_weight(const torch::Tensor& w) {
  if (quantized_weight) {
    return quantized_weight->dequantize().view(w.sizes()).to(w.scalar_type());
  }
  return LayerQuantizers::apply(quantizers.weight, w);
}

void QuantizedLayer::check_fit(const LayerQuantSpecs& new_specs) const {
  check_specs(new_specs);
  const torch::Tensor w = quantizer_input();
  if (!new_specs.weight || !w.defined())
    return;
  const QuantSpec& spec = new_specs.weight->spec();
  if (spec.is_microscale()) {
    const int64_t block = spec.microscale_info()->block_size;
    if (w.dim() == 0 || w.size(-1) % block != 0) {
      std::ostringstream shape;
      shape << w.sizes();
      throw std::invalid_argument(
          std::string("the ") + layer_type() + "'s weight, seen as " +
          shape.str() + ", cannot be split into " + spec.microscale_name() +
          " blocks of " + std::to_string(block) + " along its last dimension");
    }
    return;
  }
  if (spec.granularity() != Granularity::per_group)
    return;
  const int64_t axis = spec.axis() < 0 ? spec.axis() + w.dim() : spec.axis();
  if (axis < 0 || axis >= w.dim() || w.size(axis) % spec.group_size() != 0) {
    std::ostringstream shape;
    shape << w.sizes();
    throw std::invalid_argument(
        std::string("the ") + layer_type() + "'s weight, seen as " +
        shape.str() + ", cannot be split into groups of " +
        std::to_string(spec.group_size()) + " along axis " +
        std::to_string(spec.axis()) + " (" + spec.to_string() + ")");
  }
}

void QuantizedLayer::set_specs(LayerQuantSpecs new_specs) {
  check_fit(new_specs);
  quantized_weight.reset();
  torch::nn::Module& module = layer_module();
  // The quantizers live on the device of the layer's own parameters.
  const auto params = module.parameters(/*recurse=*/false);
  specs = std::move(new_specs);
  quantizers = LayerQuantizers::create(
      module,
      specs,
      params.empty() ? std::nullopt : std::optional(params.front().device()));
}

std::vector<std::pair<std::string, torch::Tensor>> quantizer_state(
    const std::string& prefix,
    const FakeQuantizer& quantizer) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (quantizer.is_empty())
    return out;
  for (const auto& p : quantizer->named_parameters())
    out.emplace_back(prefix + p.key(), p.value());
  for (const auto& b : quantizer->named_buffers())
    out.emplace_back(prefix + b.key(), b.value());
  return out;
}

std::vector<std::pair<std::string, QuantizedLayer*>> quantized_layers(
    torch::nn::Module& model) {
  std::vector<std::pair<std::string, QuantizedLayer*>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* layer = dynamic_cast<QuantizedLayer*>(item.value().get()))
      out.emplace_back(item.key(), layer);
  }
  return out;
}

} // namespace qat
