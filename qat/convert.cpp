#include "qat/convert.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "qat/export/safetensors.h"
#include "qat/format.h"
#include "qat/modules/kv_cache.h"
#include "qat/modules/quantizers.h"
#include "qat/observer.h"

namespace qat {

QuantizedWeight QuantizedWeight::quantize(
    const torch::Tensor& weight,
    const QuantSpec& spec,
    const torch::Tensor& scale,
    const torch::Tensor& zero_point) {
  torch::NoGradGuard no_grad;
  return format_of(spec).quantize(
      weight.detach().to(torch::kFloat).contiguous(), spec, scale, zero_point);
}

torch::Tensor QuantizedWeight::codes() const {
  return format_of(spec).codes(*this);
}

torch::Tensor QuantizedWeight::dequantize() const {
  return format_of(spec).dequantize(*this);
}

int64_t QuantizedWeight::storage_bytes() const {
  return format_of(spec).storage_bytes(*this);
}

namespace {

const std::string kSpecKey = "qat.spec.";

std::vector<std::pair<std::string, QuantizedLayer*>> weight_quantized_layers(
    torch::nn::Module& model) {
  auto layers = quantized_layers(model);
  layers.erase(
      std::remove_if(
          layers.begin(),
          layers.end(),
          [](const auto& item) {
            return item.second->quantizers.weight.is_empty();
          }),
      layers.end());
  return layers;
}

// Everything the activation and KV cache quantizers hold (calibrated or learned scales,
// observer statistics, switches): they run at inference too.
std::vector<std::pair<std::string, torch::Tensor>> activation_quantizer_state(
    torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const auto add = [&](const std::string& prefix, const FakeQuantizer& q) {
    for (auto& item : quantizer_state(prefix, q))
      out.push_back(std::move(item));
  };
  for (const auto& [name, layer] : quantized_layers(model)) {
    add(name + ".input_quantizer.", layer->quantizers.input);
    add(name + ".output_quantizer.", layer->quantizers.output);
  }
  for (const auto& [name, layer] : kv_cache_layers(model)) {
    add(name + ".k_cache_quantizer.", layer->k_cache_quantizer);
    add(name + ".v_cache_quantizer.", layer->v_cache_quantizer);
  }
  return out;
}

} // namespace

int64_t convert(torch::nn::Module& model) {
  const auto layers = weight_quantized_layers(model);
  for (const auto& [name, layer] : layers)
    layer->convert_weight();
  return static_cast<int64_t>(layers.size());
}

std::map<std::string, const QuantizedWeight*> quantized_weights(
    torch::nn::Module& model) {
  std::map<std::string, const QuantizedWeight*> out;
  for (const auto& [name, layer] : quantized_layers(model)) {
    if (layer->quantized_weight)
      out[name] = &*layer->quantized_weight;
  }
  return out;
}

void save_converted(torch::nn::Module& model, const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  for (const auto& [name, layer] : weight_quantized_layers(model)) {
    if (!layer->quantized_weight) {
      throw std::invalid_argument(
          "save_converted: layer '" + name +
          "' has a weight quantizer but was not converted; call convert()");
    }
    const QuantizedWeight& q = *layer->quantized_weight;
    tensors.emplace_back(name + ".weight", q.data);
    tensors.emplace_back(name + ".weight_scale", q.scale);
    if (q.zero_point.defined())
      tensors.emplace_back(name + ".weight_zero_point", q.zero_point);
    if (q.global_scale.defined())
      tensors.emplace_back(name + ".weight_global_scale", q.global_scale);
    tensors.emplace_back(name + ".weight_shape", torch::tensor(q.shape));
    metadata[kSpecKey + name] = q.spec.to_string();
  }
  for (const auto& [name, tensor] : activation_quantizer_state(model))
    tensors.emplace_back(name, tensor.detach());
  safetensors::write(path, tensors, metadata);
}

void load_converted(torch::nn::Module& model, const std::string& path) {
  const auto file = safetensors::File::read(path);
  std::vector<std::pair<QuantizedLayer*, QuantizedWeight>> loaded;
  for (const auto& [name, layer] : weight_quantized_layers(model)) {
    const auto fail = [&, &name = name](const std::string& why) {
      throw std::runtime_error(path + ": layer '" + name + "': " + why);
    };
    const QuantSpec& spec = layer->quantizers.weight->options().spec();
    const auto saved = file.metadata().find(kSpecKey + name);
    if (saved == file.metadata().end())
      fail("not in the file");
    if (saved->second != spec.to_string()) {
      fail(
          "saved as " + saved->second + " but the model's spec is " +
          spec.to_string());
    }
    // What convert() would make of this layer: the shapes and dtypes to
    // expect.
    const torch::Tensor w = layer->weight_to_quantize().detach();
    const QParams params = dynamic_qparams(w, spec);
    const QuantizedWeight like =
        QuantizedWeight::quantize(w, spec, params.scale, params.zero_point);
    QuantizedWeight q{spec, like.shape, {}, {}, {}, {}};
    const auto take = [&](const std::string& suffix,
                          const torch::Tensor& want) {
      const std::string key = name + suffix;
      if (!file.contains(key))
        fail("missing tensor '" + key + "'");
      torch::Tensor t = file.tensor(key);
      if (t.sizes() != want.sizes() || t.scalar_type() != want.scalar_type()) {
        std::ostringstream why;
        why << "tensor '" << key << "' is " << t.scalar_type() << t.sizes()
            << ", expected " << want.scalar_type() << want.sizes();
        fail(why.str());
      }
      return t.to(want.device());
    };
    q.data = take(".weight", like.data);
    q.scale = take(".weight_scale", like.scale);
    if (like.zero_point.defined())
      q.zero_point = take(".weight_zero_point", like.zero_point);
    if (like.global_scale.defined())
      q.global_scale = take(".weight_global_scale", like.global_scale);
    if (!torch::equal(
            take(".weight_shape", torch::tensor(like.shape)),
            torch::tensor(like.shape)))
      fail("its weight shape differs from the model's");
    loaded.emplace_back(layer, std::move(q));
  }
  const auto activations = activation_quantizer_state(model);
  for (const auto& [name, tensor] : activations) {
    if (!file.contains(name)) {
      throw std::runtime_error(
          path + ": missing activation quantizer tensor '" + name + "'");
    }
  }
  for (auto& [layer, q] : loaded)
    layer->quantized_weight = std::move(q);
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : activations) {
    torch::Tensor target = tensor;
    target.set_data(file.tensor(name).to(tensor.device()));
  }
}

} // namespace qat
