#include "qat/export/compressed_tensors.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

#include "kernels/ref/microscale_ref.h"
#include "qat/export/atomic_file.h"
#include "qat/export/safetensors.h"
#include "qat/format.h"
#include "qat/modules/kv_cache.h"
#include "qat/modules/quantizers.h"

namespace qat::compressed_tensors {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

[[noreturn]] void refuse(
    const std::string& layer,
    const std::string& role,
    const QuantSpec& spec,
    const std::string& why) {
  throw std::invalid_argument(
      "compressed-tensors: layer '" + layer + "': " + role + " " +
      spec.to_string() + ": " + why);
}

// The offset that makes a spec's codes (and zero points) signed, as the
// format stores them.
int64_t signed_shift(const QuantSpec& spec) {
  return spec.is_signed() ? 0 : int64_t{1} << (spec.bits() - 1);
}

// The quantizer of `role` when it quantizes (fake-quant switched on), else
// null: a switched-off quantizer is left out, as the module leaves it out.
const FakeQuantizerImpl* active(const FakeQuantizer& quantizer) {
  if (quantizer.is_empty() || !quantizer->fake_quant_enabled())
    return nullptr;
  return quantizer.get();
}

// QuantizationArgs of a microscaling quantizer: compressed-tensors' preset
// schemes NVFP4 / MXFP4 / MXFP8 (quantization/quant_scheme.py). NVFP4 is
// strategy tensor_group (block scales under a global one): a weight's global
// scale is stored, an activation's is calibrated (dynamic "local": block
// scales from each input, the stored global scale); MX activations are wholly
// dynamic.
json microscale_args(
    const std::string& layer,
    const std::string& role,
    const QuantSpec& spec,
    bool is_weight) {
  const auto& info = *spec.microscale_info();
  json args = {
      {"num_bits", info.element_bits},
      {"type", "float"},
      {"symmetric", true},
      {"group_size", info.block_size},
      {"strategy", info.global_scale ? "tensor_group" : "group"},
      {"dynamic", false},
      {"scale_dtype",
       info.global_scale ? "torch.float8_e4m3fn" : "torch.uint8"},
  };
  if (is_weight)
    return args;
  if (info.global_scale) {
    if (spec.dynamic()) {
      refuse(
          layer,
          role,
          spec,
          "compressed-tensors stores an NVFP4 activation's global scale: "
          "calibrate it (dynamic: false)");
    }
    args["dynamic"] = "local";
    args["observer"] = "static_minmax";
  } else {
    args["dynamic"] = true;
  }
  return args;
}

// QuantizationArgs (compressed_tensors/quantization/quant_args.py) of one
// quantizer.
json quantization_args(
    const std::string& layer,
    const std::string& role,
    const FakeQuantizerImpl& quantizer,
    bool is_weight) {
  const QuantSpec& spec = quantizer.options().spec();
  if (spec.gguf() != GgufRule::none) {
    refuse(
        layer,
        role,
        spec,
        "GGUF block formats are exported as GGUF (--format gguf)");
  }
  if (spec.format() == NumberFormat::fp8_e5m2)
    refuse(layer, role, spec, "compressed-tensors stores FP8 as e4m3 only");
  if (spec.is_microscale())
    return microscale_args(layer, role, spec, is_weight);
  json args = {
      {"num_bits", spec.is_fp8() ? 8 : spec.bits()},
      {"type", spec.is_fp8() ? "float" : "int"},
      {"symmetric", spec.is_fp8() || spec.symmetric()},
      {"group_size", nullptr},
      // Converted weights have fixed scales, whatever computed them.
      {"dynamic", !is_weight && spec.dynamic()},
  };
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      args["strategy"] = "tensor";
      break;
    case Granularity::per_channel:
      if (!is_weight || (spec.axis() != 0 && spec.axis() != -2)) {
        refuse(
            layer,
            role,
            spec,
            "per-channel scales are stored for the output channels of "
            "weights only (axis 0)");
      }
      args["strategy"] = "channel";
      break;
    case Granularity::per_group:
      if (!is_weight || (spec.axis() != -1 && spec.axis() != 1)) {
        refuse(
            layer,
            role,
            spec,
            "group scales are stored for weights along their input "
            "dimension only (axis -1)");
      }
      args["strategy"] = "group";
      args["group_size"] = spec.group_size();
      break;
    case Granularity::per_token:
      if (is_weight)
        refuse(layer, role, spec, "per-token scales are for activations");
      args["strategy"] = "token";
      break;
  }
  if (!is_weight) {
    if (spec.narrow_range()) {
      refuse(
          layer,
          role,
          spec,
          "compressed-tensors quantizes activations to the full code range");
    }
    if (quantizer.options().estimator() == Estimator::pact) {
      refuse(
          layer,
          role,
          spec,
          "PACT's clipping level has no place in the format; use ste or lsq");
    }
  }
  return args;
}

// The scheme of one quantized layer: weights, input and output activations,
// and the format compressed-tensors infers for it.
struct LayerScheme {
  json scheme; // QuantizationScheme without targets
  std::string format;
};

LayerScheme layer_scheme(const std::string& name, QuantizedLayer& layer) {
  const std::string type = layer.layer_type();
  if (type != "Linear" && type != "Embedding") {
    throw std::invalid_argument(
        "compressed-tensors: layer '" + name + "' is a quantized " + type +
        "; the format holds quantized Linear and Embedding layers (keep it "
        "float, or export as ONNX)");
  }
  const FakeQuantizerImpl* weight = active(layer.quantizers.weight);
  if (!weight) {
    throw std::invalid_argument(
        "compressed-tensors: layer '" + name +
        "' quantizes activations without its weight; the format's schemes "
        "quantize weights");
  }
  if (!layer.quantized_weight) {
    throw std::invalid_argument(
        "compressed-tensors: layer '" + name +
        "' has a weight quantizer but was not converted; call convert()");
  }
  LayerScheme out;
  out.scheme["weights"] = quantization_args(name, "weight", *weight, true);
  for (const auto& [role, quantizer] :
       {std::pair{"input_activations", &layer.quantizers.input},
        std::pair{"output_activations", &layer.quantizers.output}}) {
    const FakeQuantizerImpl* q = active(*quantizer);
    out.scheme[role] =
        q ? quantization_args(name, role, *q, false) : json(nullptr);
  }
  const QuantSpec& weight_spec = weight->options().spec();
  out.format = weight_spec.is_microscale()
      ? weight_spec.microscale_info()->compression_format
      : weight_spec.is_fp8()                       ? "float-quantized"
      : !out.scheme["input_activations"].is_null() ? "int-quantized"
                                                   : "pack-quantized";
  out.scheme["format"] = out.format;
  return out;
}

// A scale or zero point in the format's layout for `strategy`: [N, 1],
// [N, groups] or [1].
torch::Tensor param_layout(
    const torch::Tensor& p,
    const std::string& strategy,
    int64_t rows) {
  if (strategy == "tensor")
    return p.reshape({1});
  return p.reshape({rows, -1});
}

// A microscaling weight in the compressor's own layout
// (kernels/ref/microscale_ref.h): values and block scales as convert stored
// them, 2-D like the weight, and NVFP4's global scale.
void append_microscale_weight(
    NamedTensors& out,
    const std::string& name,
    const QuantizedWeight& q) {
  const auto& info = *q.spec.microscale_info();
  const int64_t rows = q.shape.front();
  out.emplace_back(
      name + "." + info.values_tensor, q.data.cpu().reshape({rows, -1}));
  out.emplace_back(name + ".weight_scale", q.scale.cpu().reshape({rows, -1}));
  if (info.global_scale)
    out.emplace_back(name + ".weight_global_scale", q.global_scale.cpu());
}

// An integer or FP8 weight: codes (packed for pack-quantized), scales and
// zero points.
void append_weight(
    NamedTensors& out,
    const std::string& name,
    const QuantizedWeight& q,
    const LayerScheme& scheme) {
  const QuantSpec& spec = q.spec;
  const std::string strategy = scheme.scheme["weights"]["strategy"];
  const int64_t rows = q.shape.front();
  if (scheme.format == "float-quantized") {
    out.emplace_back(name + ".weight", q.data.cpu());
  } else {
    const int64_t shift = signed_shift(spec);
    const torch::Tensor codes = q.codes().cpu() - shift;
    torch::Tensor zero_point;
    if (!spec.symmetric()) {
      zero_point = param_layout(
          q.zero_point.detach().cpu().to(torch::kInt) - shift, strategy, rows);
    }
    if (scheme.format == "int-quantized") {
      out.emplace_back(name + ".weight", codes.to(torch::kChar));
    } else {
      out.emplace_back(name + ".weight_packed", pack_int32(codes, spec.bits()));
      out.emplace_back(name + ".weight_shape", torch::tensor(q.shape));
    }
    if (zero_point.defined()) {
      // Group and channel zero points of packed weights are packed too,
      // along the output channels.
      const bool packed_zp =
          scheme.format == "pack-quantized" && strategy != "tensor";
      out.emplace_back(
          name + ".weight_zero_point",
          packed_zp ? pack_int32(zero_point.t(), spec.bits()).t().contiguous()
                    : zero_point.to(torch::kChar));
    }
  }
  out.emplace_back(
      name + ".weight_scale",
      param_layout(q.scale.detach().cpu().to(torch::kFloat), strategy, rows));
}

// The tensors of one converted layer, named as the format names them.
NamedTensors layer_tensors(
    const std::string& name,
    QuantizedLayer& layer,
    const LayerScheme& scheme) {
  NamedTensors out;
  const QuantizedWeight& q = *layer.quantized_weight;
  if (q.spec.is_microscale())
    append_microscale_weight(out, name, q);
  else
    append_weight(out, name, q, scheme);
  for (const auto& [role, prefix, quantizer] :
       {std::tuple{"input_activations", ".input", &layer.quantizers.input},
        std::tuple{
            "output_activations", ".output", &layer.quantizers.output}}) {
    const json& args = scheme.scheme[role];
    if (args.is_null() || args["dynamic"] == true)
      continue;
    const FakeQuantizerImpl& fq = **quantizer;
    const QuantSpec& act = fq.options().spec();
    if (act.is_microscale()) {
      // NVFP4's calibrated global scale (dynamic "local").
      out.emplace_back(
          name + prefix + "_global_scale",
          fq.scale().detach().cpu().to(torch::kFloat).reshape({1}));
      continue;
    }
    out.emplace_back(
        name + prefix + "_scale",
        fq.scale().detach().cpu().to(torch::kFloat).reshape({1}));
    if (!act.is_fp8() && !act.symmetric()) {
      out.emplace_back(
          name + prefix + "_zero_point",
          (integer_zero_point(fq.zero_point().detach().cpu(), act) -
           signed_shift(act))
              .to(torch::kChar)
              .reshape({1}));
    }
  }
  return out;
}

// The attention layers' KV cache scales, as compressed-tensors'
// kv_cache_scheme holds them (quantization/lifecycle/apply.py,
// _apply_kv_cache_scheme; modeling/kvcache.py): one scheme for every attention
// layer, FP8 e4m3 with static scales, strategy "tensor" (L.k_scale,
// L.v_scale [1]) or "attn_head" ([kv_heads, 1, 1]), which vLLM reads by the
// same names (its CompressedTensorsKVCacheMethod). Null when no layer
// quantizes its cache.
struct KvCachePlan {
  json scheme;
  std::vector<std::pair<std::string, KvCacheLayer*>> layers;
};

KvCachePlan kv_cache_plan(torch::nn::Module& model) {
  KvCachePlan out;
  const auto layers = kv_cache_layers(model);
  std::string first;
  for (const auto& [name, layer] : layers) {
    const FakeQuantizerImpl* k = active(layer->k_cache_quantizer);
    const FakeQuantizerImpl* v = active(layer->v_cache_quantizer);
    if (!k && !v)
      continue;
    if (!k || !v) {
      throw std::invalid_argument(
          "compressed-tensors: attention layer '" + name +
          "' quantizes only its " + (k ? "keys" : "values") +
          "; kv_cache_scheme quantizes both");
    }
    const QuantSpec& spec = k->options().spec();
    const auto fail = [&, &name = name](const std::string& why) {
      throw std::invalid_argument(
          "compressed-tensors: attention layer '" + name + "': KV cache " +
          spec.to_string() + ": " + why);
    };
    if (spec.format() != NumberFormat::fp8_e4m3)
      fail("compressed-tensors and vLLM store an FP8 e4m3 KV cache");
    if (spec.dynamic())
      fail(
          "vLLM reads static KV cache scales: calibrate them (dynamic: false)");
    const std::string strategy =
        spec.granularity() == Granularity::per_tensor ? "tensor" : "attn_head";
    const json scheme = {
        {"num_bits", 8},
        {"type", "float"},
        {"symmetric", true},
        {"group_size", nullptr},
        {"strategy", strategy},
        {"dynamic", false},
    };
    if (out.layers.empty()) {
      out.scheme = scheme;
      first = name;
    } else if (scheme != out.scheme) {
      fail(
          "kv_cache_scheme is one scheme for every attention layer, and '" +
          first + "' has another");
    }
    out.layers.emplace_back(name, layer);
  }
  if (!out.layers.empty() && out.layers.size() != layers.size()) {
    throw std::invalid_argument(
        "compressed-tensors: kv_cache_scheme quantizes every attention layer's "
        "cache, but only " +
        std::to_string(out.layers.size()) + " of " +
        std::to_string(layers.size()) + " do here");
  }
  return out;
}

// The scales of one layer's keys (or values) as vLLM and transformers load
// them: float32 [1], or [kv_heads, 1, 1] per head.
torch::Tensor kv_scale(const FakeQuantizerImpl& quantizer) {
  const torch::Tensor s = quantizer.scale().detach().cpu().to(torch::kFloat);
  return quantizer.options().spec().granularity() == Granularity::per_tensor
      ? s.reshape({1})
      : s.reshape({-1, 1, 1});
}

struct Plan {
  json config;
  std::string format;
  KvCachePlan kv_cache;
  // Quantized layers by name, with their scheme.
  std::vector<std::pair<std::string, std::pair<QuantizedLayer*, LayerScheme>>>
      layers;
  // Names of quantizer parameters and buffers (not exported as such).
  std::set<std::string> quantizer_state;
};

Plan plan(torch::nn::Module& model, const ExportOptions& options) {
  Plan p;
  std::map<std::string, std::vector<std::string>> groups; // scheme -> layers
  std::map<std::string, std::set<std::string>> group_types;
  std::map<std::string, std::vector<std::string>> float_layers; // by type
  std::set<std::string> formats;
  for (const auto& [name, layer] : quantized_layers(model)) {
    for (const auto& [role, quantizer] :
         {std::pair{".weight_quantizer.", &layer->quantizers.weight},
          std::pair{".input_quantizer.", &layer->quantizers.input},
          std::pair{".output_quantizer.", &layer->quantizers.output}}) {
      for (const auto& item : quantizer_state(name + role, *quantizer))
        p.quantizer_state.insert(item.first);
    }
    const bool quantizes = active(layer->quantizers.weight) ||
        active(layer->quantizers.input) || active(layer->quantizers.output);
    if (!quantizes) {
      float_layers[layer->layer_type()].push_back(name);
      continue;
    }
    LayerScheme scheme = layer_scheme(name, *layer);
    const std::string key = scheme.scheme.dump();
    groups[key].push_back(name);
    group_types[key].insert(layer->layer_type());
    formats.insert(scheme.format);
    p.layers.emplace_back(name, std::pair{layer, std::move(scheme)});
  }
  p.kv_cache = kv_cache_plan(model);
  for (const auto& [name, layer] : p.kv_cache.layers) {
    for (const auto& [role, quantizer] :
         {std::pair{".k_cache_quantizer.", &layer->k_cache_quantizer},
          std::pair{".v_cache_quantizer.", &layer->v_cache_quantizer}}) {
      for (const auto& item : quantizer_state(name + role, *quantizer))
        p.quantizer_state.insert(item.first);
    }
  }
  if (p.layers.empty() && p.kv_cache.layers.empty()) {
    throw std::invalid_argument(
        "compressed-tensors: the model has no quantized layer to export");
  }
  // A KV cache alone: dense weights (config_groups stays an empty object,
  // which compressed-tensors requires).
  p.format = formats.empty() ? "dense"
      : formats.size() == 1  ? *formats.begin()
                             : "mixed-precision";

  // Float layers of the quantized classes: in "ignore", so that a class
  // target leaves them out (and readers see them named).
  std::vector<std::string> ignore = options.ignore();
  std::set<std::string> quantized_types;
  for (const auto& [key, types] : group_types)
    quantized_types.insert(types.begin(), types.end());
  for (const auto& type : quantized_types) {
    ignore.insert(
        ignore.end(), float_layers[type].begin(), float_layers[type].end());
  }
  json config_groups = json::object();
  int index = 0;
  for (const auto& [key, names] : groups) {
    json group = json::parse(key);
    // One scheme targets its classes; several target their layers by name.
    group["targets"] = groups.size() == 1
        ? std::vector<std::string>(
              group_types[key].begin(), group_types[key].end())
        : names;
    config_groups["group_" + std::to_string(index++)] = group;
  }
  p.config = {
      {"quant_method", "compressed-tensors"},
      {"format", p.format},
      {"quantization_status", "compressed"},
      {"config_groups", config_groups},
      {"ignore", ignore},
      {"kv_cache_scheme",
       p.kv_cache.layers.empty() ? json(nullptr) : p.kv_cache.scheme},
      {"global_compression_ratio", nullptr},
  };
  return p;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
      s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Every tensor of the served model in module order: float parameters and
// buffers by name, each converted layer's tensors where its weight was.
NamedTensors served_tensors(torch::nn::Module& model, const Plan& p) {
  std::map<std::string, std::pair<QuantizedLayer*, const LayerScheme*>>
      by_weight;
  for (const auto& [name, entry] : p.layers)
    by_weight[name + ".weight"] = {entry.first, &entry.second};
  NamedTensors out;
  const auto add = [&](const std::string& name, const torch::Tensor& t) {
    if (p.quantizer_state.count(name))
      return;
    const auto it = by_weight.find(name);
    if (it == by_weight.end()) {
      out.emplace_back(name, t.detach().cpu());
      return;
    }
    const std::string layer = name.substr(0, name.size() - 7);
    for (auto& item :
         layer_tensors(layer, *it->second.first, *it->second.second))
      out.push_back(std::move(item));
  };
  for (const auto& t : model.named_parameters())
    add(t.key(), t.value());
  for (const auto& t : model.named_buffers())
    add(t.key(), t.value());
  for (const auto& [name, layer] : p.kv_cache.layers) {
    out.emplace_back(name + ".k_scale", kv_scale(*layer->k_cache_quantizer));
    out.emplace_back(name + ".v_scale", kv_scale(*layer->v_cache_quantizer));
  }
  return out;
}

int64_t tensor_bytes(const torch::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

} // namespace

torch::Tensor pack_int32(const torch::Tensor& codes, int bits) {
  TORCH_CHECK(
      bits >= 1 && bits <= 8, "pack_int32: bits must be in [1, 8], got ", bits);
  TORCH_CHECK(
      codes.dim() == 2, "pack_int32: codes must be 2-D, got ", codes.sizes());
  const torch::Tensor c = codes.cpu().to(torch::kInt).contiguous();
  const int64_t rows = c.size(0), cols = c.size(1);
  const int64_t words = (cols * bits + 31) / 32;
  const int64_t groups = (cols + 31) / 32;
  torch::Tensor out = torch::zeros({rows, groups * bits}, torch::kInt);
  const int32_t* in = c.const_data_ptr<int32_t>();
  auto* packed = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  const int32_t offset = 1 << (bits - 1), mask = (1 << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* row = packed + r * groups * bits;
    for (int64_t j = 0; j < cols; ++j) {
      const int32_t code = in[r * cols + j];
      TORCH_CHECK(
          code >= -offset && code < offset,
          "pack_int32: code ",
          code,
          " does not fit ",
          bits,
          " signed bits");
      const auto value = static_cast<uint32_t>((code + offset) & mask);
      // Element i of a group of 32 starts at bit i * bits of its b words.
      const int64_t bit = (j / 32) * 32 * bits + (j % 32) * bits;
      const int64_t word = bit / 32, shift = bit % 32;
      row[word] |= value << shift;
      if (shift + bits > 32)
        row[word + 1] |= value >> (32 - shift);
    }
  }
  return out.narrow(1, 0, words).contiguous();
}

ExportReport save(
    torch::nn::Module& model,
    const std::string& directory,
    const std::string& model_config_json,
    const ExportOptions& options) {
  json config;
  try {
    config = json::parse(model_config_json);
  } catch (const json::exception& e) {
    throw std::invalid_argument(
        std::string("compressed-tensors: the model's config is not JSON: ") +
        e.what());
  }
  if (!config.is_object()) {
    throw std::invalid_argument(
        "compressed-tensors: the model's config must be a JSON object");
  }
  if (options.max_shard_bytes() <= 0) {
    throw std::invalid_argument(
        "compressed-tensors: max_shard_bytes must be positive, got " +
        std::to_string(options.max_shard_bytes()));
  }
  const Plan p = plan(model, options);
  const NamedTensors tensors = served_tensors(model, p);

  // Consecutive tensors fill a shard up to the limit.
  std::vector<NamedTensors> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& item : tensors) {
    const int64_t bytes = tensor_bytes(item.second);
    if (!shards.back().empty() &&
        shard_bytes + bytes > options.max_shard_bytes()) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(item);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  fs::create_directories(directory);
  const fs::path dir(directory);
  ExportReport report;
  report.format = p.format;
  report.quantized_layers = static_cast<int64_t>(p.layers.size());
  json weight_map = json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    if (n == 1) {
      std::snprintf(name, sizeof name, "model.safetensors");
    } else {
      std::snprintf(
          name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    }
    safetensors::write((dir / name).string(), shards[i], {{"format", "pt"}});
    for (const auto& item : shards[i])
      weight_map[item.first] = name;
    report.files.push_back(name);
  }
  if (n > 1) {
    const json index = {
        {"metadata", {{"total_size", total_bytes}}},
        {"weight_map", weight_map}};
    write_string_atomically(
        (dir / "model.safetensors.index.json").string(),
        "compressed-tensors export",
        index.dump(2));
    report.files.push_back("model.safetensors.index.json");
  }
  config["quantization_config"] = p.config;
  write_string_atomically(
      (dir / "config.json").string(),
      "compressed-tensors export",
      config.dump(2) + "\n");
  report.files.push_back("config.json");

  // What an earlier export with another shard count left behind.
  const std::set<std::string> written(report.files.begin(), report.files.end());
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    const bool ours = file == "model.safetensors" ||
        file == "model.safetensors.index.json" ||
        (file.rfind("model-", 0) == 0 && ends_with(file, ".safetensors"));
    if (ours && !written.count(file))
      fs::remove(entry.path());
  }
  for (const auto& file : report.files)
    report.file_bytes += static_cast<int64_t>(fs::file_size(dir / file));
  return report;
}

} // namespace qat::compressed_tensors
