#include "qat/prepare.h"

#include <torch/torch.h>

#include <fnmatch.h>

#include <iomanip>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "qat/modules/kv_cache.h"
#include "qat/modules/quantizers.h"

namespace qat {
namespace {

constexpr const char* kLayerTypes[] = {
    "Linear",
    "Conv2d",
    "Embedding",
    "Activation"};

// A compiled rule: the glob or regex, and its type filter.
struct Matcher {
  std::string glob;
  std::optional<std::regex> regex;
  std::vector<std::string> layer_types; // empty: any

  bool matches(const std::string& name, const char* type) const {
    if (!layer_types.empty() &&
        std::find(layer_types.begin(), layer_types.end(), type) ==
            layer_types.end())
      return false;
    if (regex)
      return std::regex_match(name, *regex);
    return ::fnmatch(glob.c_str(), name.c_str(), 0) == 0;
  }
};

std::string rule_text(const QuantRule& rule, size_t index) {
  return "rule " + std::to_string(index) + " ('" + rule.pattern + "'" +
      (rule.layer_type.empty() ? "" : ", " + rule.layer_type) + ")";
}

Matcher compile(const QuantRule& rule, size_t index) {
  if (rule.pattern.empty())
    throw std::invalid_argument(
        "QuantConfig " + rule_text(rule, index) + ": empty pattern");
  Matcher m{rule.pattern, std::nullopt, {}};
  for (size_t begin = 0; !rule.layer_type.empty();) {
    const size_t bar = rule.layer_type.find('|', begin);
    const std::string type = rule.layer_type.substr(begin, bar - begin);
    if (std::find(std::begin(kLayerTypes), std::end(kLayerTypes), type) ==
        std::end(kLayerTypes)) {
      throw std::invalid_argument(
          "QuantConfig " + rule_text(rule, index) + ": unknown layer type '" +
          type + "'; expected Linear, Conv2d, Embedding or Activation");
    }
    m.layer_types.push_back(type);
    if (bar == std::string::npos)
      break;
    begin = bar + 1;
  }
  if (rule.pattern.rfind("re:", 0) == 0) {
    try {
      m.regex.emplace(rule.pattern.substr(3), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw std::invalid_argument(
          "QuantConfig " + rule_text(rule, index) +
          ": invalid regex: " + e.what());
    }
  }
  return m;
}

// Float LibTorch layers that a rule could have meant but prepare cannot reach.
const char* float_layer_type(const torch::nn::Module& m) {
  if (m.as<torch::nn::LinearImpl>())
    return "torch::nn::Linear";
  if (m.as<torch::nn::Conv2dImpl>())
    return "torch::nn::Conv2d";
  if (m.as<torch::nn::EmbeddingImpl>())
    return "torch::nn::Embedding";
  return nullptr;
}

// Not modules(include_self = true): that needs the model to be owned by a
// shared_ptr, and models on the stack are fine everywhere else.
template <typename Fn>
void for_each_quantizer(torch::nn::Module& model, Fn&& fn) {
  if (auto* self = model.as<FakeQuantizerImpl>())
    fn(*self);
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* fq = m->as<FakeQuantizerImpl>())
      fn(*fq);
  }
}

} // namespace

QuantRule QuantRule::quantize(
    std::string pattern,
    LayerQuantSpecs specs,
    std::string layer_type) {
  return {std::move(pattern), std::move(layer_type), std::move(specs)};
}

QuantRule QuantRule::skip(std::string pattern, std::string layer_type) {
  return {std::move(pattern), std::move(layer_type), std::nullopt};
}

std::string PrepareReport::table() const {
  size_t name_width = 5;
  for (const auto& l : layers)
    name_width = std::max(name_width, l.name.size());
  std::ostringstream out;
  out << std::left << std::setw(static_cast<int>(name_width)) << "layer"
      << "  " << std::setw(10) << "type"
      << "  " << std::setw(4) << "rule"
      << "  quantization\n";
  for (const auto& l : layers) {
    out << std::setw(static_cast<int>(name_width)) << l.name << "  "
        << std::setw(10) << l.layer_type << "  " << std::setw(4)
        << (l.rule < 0 ? "-" : std::to_string(l.rule)) << "  " << l.quantization
        << "\n";
  }
  return out.str();
}

PrepareReport prepare(torch::nn::Module& model, const QuantConfig& config) {
  std::vector<Matcher> matchers;
  for (size_t i = 0; i < config.rules.size(); ++i)
    matchers.push_back(compile(config.rules[i], i));

  struct Decision {
    std::string name;
    QuantizedLayer* layer;
    int rule;
  };
  std::vector<Decision> decisions;
  std::vector<bool> used(config.rules.size(), false);
  std::string names;
  for (const auto& item :
       model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    const std::string& name = item.key();
    torch::nn::Module& module = *item.value();
    if (const char* float_type = float_layer_type(module)) {
      throw std::invalid_argument(
          "prepare: layer '" + name + "' is a " + float_type +
          ", which prepare cannot give quantizers; build the model from qat's layer "
          "modules (QuantLinear, QuantConv2d, QuantEmbedding), which compute in float "
          "until prepared");
    }
    auto* layer = dynamic_cast<QuantizedLayer*>(&module);
    if (!layer)
      continue;
    names +=
        (names.empty() ? "" : ", ") + name + " (" + layer->layer_type() + ")";
    int rule = -1;
    for (size_t i = 0; i < matchers.size() && rule < 0; ++i) {
      if (matchers[i].matches(name, layer->layer_type()))
        rule = static_cast<int>(i);
    }
    if (rule >= 0)
      used[rule] = true;
    decisions.push_back({name, layer, rule});
  }
  for (size_t i = 0; i < used.size(); ++i) {
    if (!used[i]) {
      throw std::invalid_argument(
          "QuantConfig " + rule_text(config.rules[i], i) +
          " matches no layer (or only layers an earlier rule decided); layers: " +
          (names.empty() ? "none" : names));
    }
  }

  const auto kv_layers = kv_cache_layers(model);
  if (config.kv_cache) {
    if (kv_layers.empty()) {
      throw std::invalid_argument(
          "QuantConfig kv_cache: the model has no attention layer with a KV "
          "cache");
    }
    KvCacheLayer::check_spec(*config.kv_cache);
  }

  // Every layer is checked before any is changed: a refused config leaves the
  // model as it was.
  for (const Decision& d : decisions) {
    if (d.rule < 0 || !config.rules[d.rule].specs)
      continue;
    try {
      d.layer->check_fit(*config.rules[d.rule].specs);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(
          "QuantConfig " + rule_text(config.rules[d.rule], d.rule) +
          " does not fit layer '" + d.name + "': " + e.what());
    }
  }

  PrepareReport report;
  for (const auto& [name, layer] : kv_layers) {
    layer->set_kv_cache_quantizer(config.kv_cache);
    if (config.kv_cache) {
      report.layers.push_back(
          {name + " (keys, values)",
           "KvCache",
           config.kv_cache->spec().to_string() + " (" +
               estimator_name(config.kv_cache->estimator()) + ")",
           -1});
    }
  }
  for (const Decision& d : decisions) {
    const auto& specs = d.rule >= 0 ? config.rules[d.rule].specs : std::nullopt;
    d.layer->set_specs(specs.value_or(LayerQuantSpecs{}));
    report.layers.push_back(
        {d.name,
         d.layer->layer_type(),
         specs ? describe(*specs) : "float",
         d.rule});
  }
  return report;
}

void set_observers(torch::nn::Module& model, bool enabled) {
  for_each_quantizer(
      model, [&](FakeQuantizerImpl& fq) { fq.enable_observer(enabled); });
}

void set_fake_quant(torch::nn::Module& model, bool enabled) {
  for_each_quantizer(
      model, [&](FakeQuantizerImpl& fq) { fq.enable_fake_quant(enabled); });
}

void calibrate(
    torch::nn::Module& model,
    const std::function<void()>& run_batches) {
  set_observers(model, true);
  set_fake_quant(model, false);
  {
    torch::NoGradGuard no_grad;
    run_batches();
  }
  set_observers(model, false);
  set_fake_quant(model, true);
}

} // namespace qat
