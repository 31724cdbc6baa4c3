// QuantSpec: what a quantizer does to one tensor: the number format, the
// granularity of its scales, and how those scales are found. Validated once,
// when built from a config.
//
// Example:
//   auto w4 = qat::QuantSpec()
//                 .bits(4)
//                 .granularity(qat::Granularity::per_group)
//                 .axis(-1)
//                 .group_size(128);
//   w4.validate();  // throws std::invalid_argument naming the bad field
//   w4.quant_min(); // -8
//   w4.quant_max(); // 7
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>

namespace qat {

namespace kernels {
struct MicroscaleFormatInfo; // kernels/ref/microscale_ref.h
} // namespace kernels

enum class NumberFormat {
  int_,     // two's-complement or unsigned integer of `bits` bits (2..8)
  fp8_e4m3, // OCP e4m3fn: max 448, no infinities
  fp8_e5m2, // OCP e5m2: max 57344
  // Microscaling block formats (kernels/microscale_math.h): the values are
  // rounded in blocks along the last dimension, each block with its own
  // scale computed from it as compressed-tensors computes it.
  nvfp4, // e2m1 values, an e4m3 scale per 16, a float32 global scale
  mxfp4, // e2m1 values, an e8m0 (power-of-two) scale per 32
  mxfp8, // e4m3fn values, an e8m0 scale per 32
};

enum class Granularity {
  per_tensor,  // one scale
  per_channel, // one scale per index of `axis`
  per_group,   // one scale per `group_size` consecutive elements along `axis`
  per_token,   // one scale per row of the last dimension (dynamic activations)
};

// GGUF block rules: ggml's 32-value blocks Q8_0, Q4_0, Q5_0, Q5_1 and its
// K-quants Q4_K, Q5_K, Q6_K (256-value super-blocks), along the last
// dimension, scales computed from each block as ggml's quantize_row_*_ref
// computes them and stored as half (kernels/ref/gguf_ref.h has one row per
// type). A spec with one of them is that exact format (QuantSpec::gguf_block),
// so a model trained with it exports to GGUF with no further loss. The order
// is kernels::GgufType's, one later.
enum class GgufRule { none, q8_0, q4_0, q5_0, q5_1, q4_k, q5_k, q6_k };

// How a symmetric integer scale follows from the largest magnitude `amax` it
// must hold. Only observers and dynamic scales use it; a learned or stored
// scale is what it is.
enum class SymmetricScale {
  // amax / (2^(bits-1) - 1), 127 or 7: the runtimes' rule (vLLM's int8
  // kernels, llama.cpp's Q8_0, TensorRT). The largest value lands on the
  // largest code exactly (x * (1/scale) is within an ulp or two of it), so
  // its code and its clamp mask do not depend on the last bit of amax.
  qmax,
  // amax / ((qmax - qmin) / 2), 127.5 or 7.5: torch.ao's observers
  // (MinMaxObserver._calculate_qparams). The largest value sits on the
  // rounding tie between the largest code and the clamp, so one ulp of amax
  // decides whether it is clamped and whether it gets a gradient.
  half_range,
};

struct QuantSpec {
  TORCH_ARG(NumberFormat, format) = NumberFormat::int_;
  TORCH_ARG(int, bits) = 8;
  TORCH_ARG(bool, is_signed) = true;
  TORCH_ARG(Granularity, granularity) = Granularity::per_tensor;
  TORCH_ARG(int64_t, axis) = 0;
  TORCH_ARG(int64_t, group_size) = 0;
  // Symmetric: zero point fixed (0 signed, 2^(bits-1) unsigned); affine:
  // learned from min/max.
  TORCH_ARG(bool, symmetric) = true;
  // Signed symmetric only: drop the most negative code, [-(2^(b-1)-1),
  // 2^(b-1)-1].
  TORCH_ARG(bool, narrow_range) = false;
  // Scales computed from every input instead of from calibrated observers.
  TORCH_ARG(bool, dynamic) = false;
  TORCH_ARG(GgufRule, gguf) = GgufRule::none;
  // Symmetric integer formats: the scale rule of observers and dynamic scales.
  TORCH_ARG(SymmetricScale, symmetric_scale) = SymmetricScale::qmax;

 public:
  // The whole spec of a GGUF block format: its bits, per_group(axis=-1,
  // group = its block size, 32 or 256), symmetric unless it stores minimums,
  // dynamic (the 32-value types: scales from each input) or static (the
  // K-quants: a searched representation, kept), with that rule.
  static QuantSpec gguf_block(GgufRule rule);

  // The whole spec of a microscaling format: its element bits, per_tensor
  // (the granularity of what is calibrated: NVFP4's global scale; the block
  // scales are always computed from each input) and dynamic (the global scale
  // too; NVFP4 may set dynamic(false) to calibrate it instead).
  static QuantSpec microscale(NumberFormat format);

  // Throws std::invalid_argument with a message naming the field and the
  // allowed values.
  void validate() const;

  bool is_fp8() const {
    return format_ == NumberFormat::fp8_e4m3 ||
        format_ == NumberFormat::fp8_e5m2;
  }
  bool is_microscale() const {
    return format_ == NumberFormat::nvfp4 || format_ == NumberFormat::mxfp4 ||
        format_ == NumberFormat::mxfp8;
  }
  // A GGUF K-quant (q4_k, q5_k, q6_k): a representation is searched and kept,
  // not recomputed from each input (QuantSpec::gguf_block makes these specs
  // static).
  bool is_gguf_kquant() const {
    return gguf_ == GgufRule::q4_k || gguf_ == GgufRule::q5_k ||
        gguf_ == GgufRule::q6_k;
  }
  int64_t quant_min() const;
  int64_t quant_max() const;
  // Symmetric integer formats: the code distance from the zero point that
  // amax maps to under symmetric_scale (127 or 127.5 for 8 bits).
  double symmetric_divisor() const;
  // Largest finite magnitude of the format in code units (qmax for integers,
  // 448/57344 for FP8, 6 or 448 for the microscaling elements).
  double format_max() const;
  const char* fp8_name() const; // "e4m3fn" / "e5m2"
  // A microscaling format's row of the kernels' table (name, block size,
  // element bits, compressed-tensors' encoding), nullptr for other formats.
  const kernels::MicroscaleFormatInfo* microscale_info() const;
  // "nvfp4", "mxfp4", "mxfp8" (the ops' and kernels' names), nullptr else.
  const char* microscale_name() const;
  const char* gguf_name() const; // "q8_0", "q4_k", ... (nullptr for none)

  // Arguments of the qat ops for a tensor of `dim` dimensions whose last size
  // is `last_size`.
  std::optional<int64_t> op_axis() const;
  int64_t op_group_size(int64_t last_size) const;

  // e.g. "int4 sym per_group(axis=-1, group=128)".
  std::string to_string() const;

  bool operator==(const QuantSpec& other) const;
};

} // namespace qat
