#include "qat/modules/kv_cache.h"

#include <stdexcept>

#include "qat/modules/quantizers.h"

namespace qat {

void KvCacheLayer::check_spec(const FakeQuantizerOptions& options) {
  const QuantSpec& spec = options.spec();
  spec.validate();
  const bool per_head = spec.granularity() == Granularity::per_channel &&
      (spec.axis() == 1 || spec.axis() == -3);
  if (spec.granularity() != Granularity::per_tensor && !per_head) {
    throw std::invalid_argument(
        "kv_cache " + spec.to_string() +
        ": KV cache scales are per_tensor or per_channel along axis 1 (one "
        "per key/value head)");
  }
  if (spec.gguf() != GgufRule::none || spec.is_microscale()) {
    throw std::invalid_argument(
        "kv_cache " + spec.to_string() +
        ": block formats are for weights and activations; quantize the KV "
        "cache to FP8 or integers");
  }
}

void KvCacheLayer::set_kv_cache_quantizer(
    const std::optional<FakeQuantizerOptions>& options) {
  if (options)
    check_spec(*options);
  torch::nn::Module& module = attention_module();
  // The attention's own parameters are its projections'.
  const auto params = module.parameters();
  const auto device =
      params.empty() ? std::nullopt : std::optional(params.front().device());
  k_cache_quantizer =
      replace_quantizer(module, "k_cache_quantizer", options, device);
  v_cache_quantizer =
      replace_quantizer(module, "v_cache_quantizer", options, device);
}

torch::Tensor KvCacheLayer::quantize_keys(const torch::Tensor& keys) {
  return LayerQuantizers::apply(k_cache_quantizer, keys);
}

torch::Tensor KvCacheLayer::quantize_values(const torch::Tensor& values) {
  return LayerQuantizers::apply(v_cache_quantizer, values);
}

std::vector<std::pair<std::string, KvCacheLayer*>> kv_cache_layers(
    torch::nn::Module& model) {
  std::vector<std::pair<std::string, KvCacheLayer*>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* layer = dynamic_cast<KvCacheLayer*>(item.value().get()))
      out.emplace_back(item.key(), layer);
  }
  return out;
}

} // namespace qat
