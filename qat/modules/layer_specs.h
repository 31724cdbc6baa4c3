// What quantizes one layer: a weight quantizer and optional input / output
// activation quantizers, each a FakeQuantizerOptions (spec + observer +
// estimator). Unset means "stays in float".
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qat/fake_quant.h"

namespace qat {

struct LayerQuantSpecs {
  std::optional<FakeQuantizerOptions> weight;
  std::optional<FakeQuantizerOptions> input;
  std::optional<FakeQuantizerOptions> output;
};

// Named presets, as users write them in configs:
//   w8a8_int8         int8 symmetric per-output-channel weights, int8 per-token
//                     dynamic activations
//   w8a8_int8_static  the same weights, int8 per-tensor static (calibrated)
//                     activations
//   w4a16_g128        int4 symmetric weights in groups of 128 along the input
//                     dimension, float activations
//   w4a8              int4 symmetric per-output-channel weights, int8
//                     per-token dynamic activations
//   fp8_e4m3          e4m3 per-output-channel weights, e4m3 per-token dynamic
//                     activations
// Throws std::invalid_argument listing the known names for any other name.
LayerQuantSpecs preset(std::string_view name);
std::vector<std::string> preset_names();

// The layer's quantizers, e.g. "weight int4 sym per_group(axis=-1, group=128)
// (lsq); input -; output -".
std::string describe(const LayerQuantSpecs& specs);

} // namespace qat
