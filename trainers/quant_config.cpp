#include "trainers/quant_config.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <utility>

#include "qat/modules/kv_cache.h"
#include "trainers/models/gguf_mix.h"

namespace qat::recipe {
namespace {

template <typename Enum, size_t N>
Enum parse_name(
    const Recipe& recipe,
    const std::string& key,
    const std::array<std::pair<const char*, Enum>, N>& names) {
  const auto text = recipe.get<std::string>(key);
  std::vector<std::string> known;
  for (const auto& [name, value] : names) {
    if (text == name)
      return value;
    known.emplace_back(name);
  }
  const std::string best = closest(text, known);
  std::string list;
  for (const auto& k : known)
    list += (list.empty() ? "" : ", ") + k;
  recipe.fail_at(
      key,
      "unknown value '" + text + "'" +
          (best.empty() ? "" : " (did you mean '" + best + "'?)") +
          "; expected one of " + list);
}

void check_keys(
    const Recipe& recipe,
    const std::string& key,
    const std::vector<std::string>& allowed) {
  for (const auto& k : recipe.keys(key)) {
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end())
      continue;
    const std::string best = closest(k, allowed);
    recipe.fail_at(
        key + "." + k,
        "unknown key" +
            (best.empty() ? ""
                          : " (did you mean '" + key + "." + best + "'?)"));
  }
}

// The quantizer at `key`, starting from `base` (a preset's, or the default).
FakeQuantizerOptions quantizer(
    const Recipe& recipe,
    const std::string& key,
    FakeQuantizerOptions options) {
  check_keys(
      recipe,
      key,
      {"format",
       "gguf",
       "bits",
       "signed",
       "symmetric",
       "narrow_range",
       "symmetric_scale",
       "granularity",
       "axis",
       "group_size",
       "dynamic",
       "observer",
       "averaging_constant",
       "percentile",
       "mse_steps",
       "estimator",
       "pact_alpha"});
  const auto has = [&](const char* k) { return recipe.has(key + "." + k); };
  const auto at = [&](const char* k) { return key + "." + k; };
  // Numbers read with their type, then checked against their range in the
  // schema's notation (the spec, the observer and the estimator check again,
  // without knowing the recipe).
  const auto integer = [&](const char* k, const char* range) {
    const auto v = recipe.get<int64_t>(at(k));
    recipe.check(at(k), std::string("int ") + range);
    return v;
  };
  const auto real = [&](const char* k, const char* range) {
    const auto v = recipe.get<double>(at(k));
    recipe.check(at(k), std::string("float ") + range);
    return v;
  };
  QuantSpec spec = options.spec();
  if (has("gguf")) {
    spec = QuantSpec::gguf_block(parse_name<GgufRule, 7>(
        recipe,
        at("gguf"),
        {{{"q8_0", GgufRule::q8_0},
          {"q4_0", GgufRule::q4_0},
          {"q5_0", GgufRule::q5_0},
          {"q5_1", GgufRule::q5_1},
          {"q4_k", GgufRule::q4_k},
          {"q5_k", GgufRule::q5_k},
          {"q6_k", GgufRule::q6_k}}}));
  }
  if (has("format")) {
    spec.format(parse_name<NumberFormat, 6>(
        recipe,
        at("format"),
        {{{"int", NumberFormat::int_},
          {"fp8_e4m3", NumberFormat::fp8_e4m3},
          {"fp8_e5m2", NumberFormat::fp8_e5m2},
          {"nvfp4", NumberFormat::nvfp4},
          {"mxfp4", NumberFormat::mxfp4},
          {"mxfp8", NumberFormat::mxfp8}}}));
    if (spec.is_fp8())
      spec.bits(8);
    // A microscaling format is one whole spec; `dynamic: false` (NVFP4)
    // calibrates its global scale.
    if (spec.is_microscale())
      spec = QuantSpec::microscale(spec.format());
  }
  if (has("bits"))
    spec.bits(static_cast<int>(integer("bits", "in [2, 8]")));
  if (has("signed"))
    spec.is_signed(recipe.get<bool>(at("signed")));
  if (has("symmetric"))
    spec.symmetric(recipe.get<bool>(at("symmetric")));
  if (has("narrow_range"))
    spec.narrow_range(recipe.get<bool>(at("narrow_range")));
  if (has("symmetric_scale")) {
    spec.symmetric_scale(parse_name<SymmetricScale, 2>(
        recipe,
        at("symmetric_scale"),
        {{{"qmax", SymmetricScale::qmax},
          {"half_range", SymmetricScale::half_range}}}));
  }
  if (has("granularity")) {
    spec.granularity(parse_name<Granularity, 4>(
        recipe,
        at("granularity"),
        {{{"per_tensor", Granularity::per_tensor},
          {"per_channel", Granularity::per_channel},
          {"per_group", Granularity::per_group},
          {"per_token", Granularity::per_token}}}));
  }
  if (has("axis")) // no layer of qat's has more than 8 dimensions
    spec.axis(integer("axis", "in [-8, 7]"));
  if (has("group_size")) // 0: none (not per_group)
    spec.group_size(integer("group_size", "in [0, 1073741824]"));
  if (has("dynamic"))
    spec.dynamic(recipe.get<bool>(at("dynamic")));
  try {
    spec.validate();
  } catch (const std::exception& e) {
    recipe.fail_at(key, e.what());
  }
  options.spec(spec);

  ObserverOptions observer = options.observer();
  if (has("observer")) {
    observer.kind(parse_name<ObserverKind, 4>(
        recipe,
        at("observer"),
        {{{"min_max", ObserverKind::min_max},
          {"moving_average", ObserverKind::moving_average},
          {"percentile", ObserverKind::percentile},
          {"mse", ObserverKind::mse}}}));
  }
  if (has("averaging_constant"))
    observer.averaging_constant(real("averaging_constant", "in (0, 1]"));
  if (has("percentile"))
    observer.percentile(real("percentile", "in (50, 100]"));
  if (has("mse_steps"))
    observer.mse_steps(integer("mse_steps", "in [1, 10000]"));
  options.observer(observer);
  if (has("estimator")) {
    options.estimator(parse_name<Estimator, 4>(
        recipe,
        at("estimator"),
        {{{"ste", Estimator::ste},
          {"lsq", Estimator::lsq},
          {"lsq_plus", Estimator::lsq_plus},
          {"pact", Estimator::pact}}}));
  }
  if (has("pact_alpha"))
    options.pact_alpha(real("pact_alpha", "in (0, 1e30]"));
  return options;
}

// weight / input / output of a rule: absent keeps the preset's, `none`
// removes it, a map refines the preset's (or builds one from the defaults).
void quantizer_slot(
    const Recipe& recipe,
    const std::string& key,
    std::optional<FakeQuantizerOptions>& slot) {
  if (!recipe.has(key))
    return;
  if (recipe.is_scalar(key)) {
    if (recipe.get<std::string>(key) != "none")
      recipe.fail_at(key, "expected a quantizer (a map) or none");
    slot.reset();
    return;
  }
  slot =
      quantizer(recipe, key, slot.value_or(FakeQuantizerOptions(QuantSpec())));
}

} // namespace

std::string gguf_mix_preset(const Recipe& recipe, const std::string& key) {
  const std::string at = key + ".gguf_mix";
  if (!recipe.has(at))
    return "";
  const auto preset = recipe.get<std::string>(at);
  const auto known = models::gguf_mix_presets();
  if (std::find(known.begin(), known.end(), preset) == known.end()) {
    std::string names;
    for (const auto& n : known)
      names += (names.empty() ? "" : ", ") + n;
    const std::string best = closest(preset, known);
    recipe.fail_at(
        at,
        "unknown llama.cpp type mix '" + preset + "'" +
            (best.empty() ? "" : " (did you mean '" + best + "'?)") +
            "; known: " + names);
  }
  return preset;
}

Estimator gguf_mix_estimator(const Recipe& recipe, const std::string& key) {
  const std::string at = key + ".gguf_mix_estimator";
  if (!recipe.has(at))
    return Estimator::ste;
  if (!recipe.has(key + ".gguf_mix"))
    recipe.fail_at(at, "gguf_mix_estimator needs a gguf_mix");
  return parse_name<Estimator, 2>(
      recipe, at, {{{"ste", Estimator::ste}, {"lsq", Estimator::lsq}}});
}

QuantConfig quant_config(const Recipe& recipe, const std::string& key) {
  if (!recipe.has(key)) {
    std::vector<std::string> known;
    const std::string parent = key.substr(0, key.rfind('.'));
    if (parent != key && recipe.has(parent))
      known = recipe.keys(parent);
    const std::string best = closest(key.substr(key.rfind('.') + 1), known);
    recipe.fail_at(
        key,
        "no such quantization scheme" +
            (best.empty() ? std::string()
                          : " (did you mean '" + parent + "." + best + "'?)"));
  }
  check_keys(
      recipe,
      key,
      {"rules", "description", "gguf_mix", "gguf_mix_estimator", "kv_cache"});
  gguf_mix_preset(recipe, key);
  gguf_mix_estimator(recipe, key);
  QuantConfig config;
  // kv_cache: the attention layers' keys and values, FP8 e4m3 per tensor
  // unless the map says otherwise (calibrated, then frozen).
  const std::string kv_cache = key + ".kv_cache";
  if (recipe.has(kv_cache))
    config.kv_cache = QuantSpec().format(NumberFormat::fp8_e4m3);
  quantizer_slot(recipe, kv_cache, config.kv_cache);
  if (config.kv_cache) {
    try {
      KvCacheLayer::check_spec(*config.kv_cache);
    } catch (const std::invalid_argument& e) {
      recipe.fail_at(kv_cache, e.what());
    }
  }
  const std::string rules = key + ".rules";
  if (!recipe.has(rules) && (recipe.has(key + ".gguf_mix") || config.kv_cache))
    return config;
  for (const auto& index : recipe.keys(rules)) {
    const std::string rule = rules + "." + index;
    check_keys(
        recipe,
        rule,
        {"match", "type", "preset", "skip", "weight", "input", "output"});
    const auto pattern = recipe.get<std::string>(rule + ".match");
    const auto type = recipe.get<std::string>(rule + ".type", "");
    if (recipe.get<bool>(rule + ".skip", false)) {
      config.rules.push_back(QuantRule::skip(pattern, type));
      continue;
    }
    LayerQuantSpecs specs;
    if (recipe.has(rule + ".preset")) {
      const auto name = recipe.get<std::string>(rule + ".preset");
      try {
        specs = preset(name);
      } catch (const std::exception& e) {
        const std::string best = closest(name, preset_names());
        recipe.fail_at(
            rule + ".preset",
            "unknown preset '" + name + "'" +
                (best.empty() ? "" : " (did you mean '" + best + "'?)"));
      }
    }
    quantizer_slot(recipe, rule + ".weight", specs.weight);
    quantizer_slot(recipe, rule + ".input", specs.input);
    quantizer_slot(recipe, rule + ".output", specs.output);
    config.rules.push_back(QuantRule::quantize(pattern, specs, type));
  }
  if (config.rules.empty())
    recipe.fail_at(rules, "a scheme needs at least one rule");
  return config;
}

} // namespace qat::recipe
