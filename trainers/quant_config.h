// Quantization schemes as recipes write them, turned into qat::QuantConfig:
//
//   quant:
//     w4a4:                          # a scheme, named by its key
//       rules:                       # in order; the first match decides
//         - match: head              # glob over layer names, or re:<regex>
//           preset: w8a8_int8_static # a qat::preset, optionally refined below
//         - match: "*"
//           type: Conv2d             # optional: Linear, Conv2d, Embedding, ...
//           weight: {bits: 4, granularity: per_channel, estimator: lsq}
//           input: {bits: 4, symmetric: false, observer: moving_average}
//         - match: "stem"
//           skip: true               # stays in high precision
//     q4_k_m:
//       gguf_mix: q4_k_m             # llama.cpp's llama-quantize types per
//                                    # tensor (q4_k_m, q5_k_m, q6_k), after
//                                    # any rules of the scheme's own
//       gguf_mix_estimator: lsq      # the mix's K-quant weights learn their
//                                    # halves d and dmin (default ste: kept
//                                    # as ggml's search found them)
//
// A quantizer takes: format (int, fp8_e4m3, fp8_e5m2), gguf (q8_0, q4_0,
// q5_0, q5_1, q4_k, q5_k, q6_k),
// bits, signed, symmetric, narrow_range, symmetric_scale (qmax: amax / 127,
// the runtimes' rule and the default; half_range: torch.ao's amax / 127.5),
// granularity (per_tensor,
// per_channel, per_group, per_token), axis, group_size, dynamic, observer
// (min_max, moving_average, percentile, mse), averaging_constant, percentile,
// mse_steps, estimator (ste, lsq, lsq_plus, pact), pact_alpha; `none`
// removes a preset's quantizer. Every error names the file, line and key.
#pragma once

#include <string>

#include "qat/prepare.h"
#include "trainers/recipe.h"

namespace qat::recipe {

// The scheme at `key` (e.g. "quant.w4a4"), validated: unknown keys, names and
// specs that QuantSpec::validate refuses are errors at their place.
// The rules only: a gguf_mix is resolved against the model (see
// gguf_mix_preset and models::gguf_mix_scheme).
QuantConfig quant_config(const Recipe& recipe, const std::string& key);

// The scheme's gguf_mix preset, checked, or "" when it has none.
std::string gguf_mix_preset(const Recipe& recipe, const std::string& key);
// The estimator of the mix's K-quant weights (ste unless gguf_mix_estimator
// says lsq).
Estimator gguf_mix_estimator(const Recipe& recipe, const std::string& key);

} // namespace qat::recipe
