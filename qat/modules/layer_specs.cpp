#include "qat/modules/layer_specs.h"

#include <sstream>
#include <stdexcept>

namespace qat {
namespace {

QuantSpec int_weights(int bits) {
  return QuantSpec().bits(bits).granularity(Granularity::per_channel).axis(0);
}

QuantSpec int8_tokens() {
  return QuantSpec().granularity(Granularity::per_token).dynamic(true);
}

struct Preset {
  const char* name;
  LayerQuantSpecs (*make)();
};

// gguf_<type>: the weight as that GGUF block type, activations float (the
// GGUF types are weight formats; llama.cpp quantizes activations its own way
// inside each kernel). One preset per row of kernels' GGUF type table.
constexpr const char* kGgufPrefix = "gguf_";

std::optional<LayerQuantSpecs> gguf_preset(std::string_view name) {
  if (name.substr(0, 5) != kGgufPrefix)
    return std::nullopt;
  for (int rule = 1; rule <= static_cast<int>(GgufRule::q6_k); ++rule) {
    const auto spec = QuantSpec::gguf_block(static_cast<GgufRule>(rule));
    if (name.substr(5) == spec.gguf_name())
      return LayerQuantSpecs{
          FakeQuantizerOptions(spec), std::nullopt, std::nullopt};
  }
  return std::nullopt;
}

// compressed-tensors' preset schemes of the same names (quant_scheme.py):
// weights in the format, activations too but for nvfp4_a16. Every block scale
// follows its input; NVFP4's global scale follows the weight (what
// compressed-tensors computes from it, and what the export stores) and is
// calibrated for activations (its static_minmax observer).
LayerQuantSpecs microscale_specs(NumberFormat format, bool activations) {
  const QuantSpec spec = QuantSpec::microscale(format);
  std::optional<FakeQuantizerOptions> input;
  if (activations) {
    input = FakeQuantizerOptions(
        QuantSpec(spec).dynamic(format != NumberFormat::nvfp4));
  }
  return LayerQuantSpecs{FakeQuantizerOptions(spec), input, std::nullopt};
}

const Preset kPresets[] = {
    {"w8a8_int8",
     [] {
       return LayerQuantSpecs{int_weights(8), int8_tokens(), std::nullopt};
     }},
    {"w8a8_int8_static",
     [] {
       return LayerQuantSpecs{
           int_weights(8), FakeQuantizerOptions(QuantSpec()), std::nullopt};
     }},
    {"w4a16_g128",
     [] {
       return LayerQuantSpecs{
           FakeQuantizerOptions(QuantSpec()
                                    .bits(4)
                                    .granularity(Granularity::per_group)
                                    .axis(-1)
                                    .group_size(128)),
           std::nullopt,
           std::nullopt};
     }},
    {"w4a8",
     [] {
       return LayerQuantSpecs{int_weights(4), int8_tokens(), std::nullopt};
     }},
    {"fp8_e4m3",
     [] {
       const auto fp8 = QuantSpec().format(NumberFormat::fp8_e4m3);
       return LayerQuantSpecs{
           FakeQuantizerOptions(
               QuantSpec(fp8).granularity(Granularity::per_channel).axis(0)),
           FakeQuantizerOptions(QuantSpec(fp8)
                                    .granularity(Granularity::per_token)
                                    .dynamic(true)),
           std::nullopt};
     }},
    {"nvfp4", [] { return microscale_specs(NumberFormat::nvfp4, true); }},
    {"nvfp4_a16", [] { return microscale_specs(NumberFormat::nvfp4, false); }},
    {"mxfp4", [] { return microscale_specs(NumberFormat::mxfp4, true); }},
    {"mxfp4_a16", [] { return microscale_specs(NumberFormat::mxfp4, false); }},
    {"mxfp8", [] { return microscale_specs(NumberFormat::mxfp8, true); }},
};

std::string describe_one(const std::optional<FakeQuantizerOptions>& options) {
  if (!options)
    return "-";
  return options->spec().to_string() + " (" +
      estimator_name(options->estimator()) + ")";
}

} // namespace

LayerQuantSpecs preset(std::string_view name) {
  for (const Preset& p : kPresets) {
    if (name == p.name)
      return p.make();
  }
  if (auto gguf = gguf_preset(name))
    return *gguf;
  std::string known;
  for (const auto& n : preset_names())
    known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument(
      "unknown quantization preset '" + std::string(name) +
      "'; known presets: " + known);
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets)
    names.emplace_back(p.name);
  for (int rule = 1; rule <= static_cast<int>(GgufRule::q6_k); ++rule)
    names.push_back(
        kGgufPrefix +
        std::string(
            QuantSpec::gguf_block(static_cast<GgufRule>(rule)).gguf_name()));
  return names;
}

std::string describe(const LayerQuantSpecs& specs) {
  return "weight " + describe_one(specs.weight) + "; input " +
      describe_one(specs.input) + "; output " + describe_one(specs.output);
}

} // namespace qat
