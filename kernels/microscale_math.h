// Scalar rules of the microscaling formats NVFP4, MXFP4 and MXFP8, shared by
// host and device code like kernels/quant_math.h (whose FP8 e4m3 codec they
// reuse). No Torch, no allocation, no tables: a CUDA kernel can call every
// function here.
//
// The rules are compressed-tensors 0.20.0's, the library llm-compressor writes
// checkpoints with and vLLM loads them with; each function names the file
// (under compressed_tensors/) and function it reproduces. Where that library's
// arithmetic has a quirk (the +0.0 of a zero zero point, the 0.125 that
// replaces a zero NVFP4 scale, MX exponents rounded up at 1.75, 2688 / amax as
// a reciprocal and a product), it is reproduced, not fixed:
// tests/python/test_microscale.py checks the results against the library bit
// for bit. One rule is qat's choice: the scale of a block that holds a NaN,
// which compressed-tensors on a CPU makes depend on the block's position (see
// mx_scale_code); qat takes the result of ATen's scalar loop everywhere.
//
//   element    e2m1 (FP4): 1 sign, 2 exponent, 1 mantissa bit: +-{0, 0.5, 1,
//              1.5, 2, 3, 4, 6}; e4m3fn (FP8) as in quant_math.h
//   NVFP4      e2m1, one e4m3fn scale per 16 values along the last dimension,
//              one float32 global scale per tensor
//   MXFP4      e2m1, one e8m0 scale (a biased power-of-two exponent) per 32
//   MXFP8      e4m3fn, one e8m0 scale per 32
//
// Fake-quant of a value x with its block's float scale s (quantize then
// dequantize, lifecycle/forward_helpers.py _quantize_dequantize):
//   y  = x / s + 0.0          (+ the zero point, 0, which makes -0.0 +0.0)
//   x' = round(clamp(y, -max, max)) * s
// where max is 6 (e2m1) or 448 (e4m3fn) and round is half to even on the
// element grid; NaN stays NaN. The straight-through mask is |y| <= max.
#pragma once

#include "kernels/quant_math.h"

namespace qat::kernels {

enum class MicroscaleFormat : int { nvfp4 = 0, mxfp4 = 1, mxfp8 = 2 };

inline namespace QAT_KERNELS_ABI {

QAT_HOST_DEVICE float abs_bits(float x) {
  return bits_float(float_bits(x) & 0x7FFFFFFFu);
}

// ---------------------------------------------------------------------------------------------
// FP4 e2m1. Code bit 3 is the sign, bits 0-2 index the magnitudes 0, 0.5, 1,
// 1.5, 2, 3, 4, 6 (exponent bias 1, code 1 the one subnormal); no inf, no NaN.
// ---------------------------------------------------------------------------------------------

// The value of a code; code 8 is -0.0 (as compressed-tensors'
// unpack_fp4_from_uint8 reads it, compressors/nvfp4/helpers.py, and as
// ml_dtypes.float4_e2m1fn and torch.float4_e2m1fn_x2 define it). Bits 4-7 are
// ignored.
QAT_HOST_DEVICE float e2m1_value(uint8_t code) {
  const uint32_t m = code & 7u;
  const float magnitude = m < 2u
      ? 0.5f * static_cast<float>(m)
      : static_cast<float>(1u << ((m >> 1) - 1u)) * ((m & 1u) ? 1.5f : 1.0f);
  return (code & 8u) ? -magnitude : magnitude;
}

// The magnitude index (0..7) of |y| rounded to the e2m1 grid, half to even,
// saturating at 6: compressed-tensors' cast_to_fp4 (quantization/utils/
// fp4_utils.py; its Triton twin _round_to_fp4 has the same thresholds)
//   [0, 0.25] -> 0, (0.25, 0.75) -> 0.5, [0.75, 1.25] -> 1, (1.25, 1.75) ->
//   1.5, [1.75, 2.5] -> 2, (2.5, 3.5) -> 3, [3.5, 5] -> 4, > 5 -> 6
// so each tie goes to the code with an even mantissa bit. NaN gives 0.
QAT_HOST_DEVICE uint32_t e2m1_index(float magnitude) {
  const float a = magnitude;
  return uint32_t(a > 0.25f) + uint32_t(a >= 0.75f) + uint32_t(a > 1.25f) +
      uint32_t(a >= 1.75f) + uint32_t(a > 2.5f) + uint32_t(a >= 3.5f) +
      uint32_t(a > 5.0f);
}

// y rounded to the nearest e2m1 value (half to even, saturating), as
// cast_to_fp4 returns it: abs(y) rounded, times torch.sign(y). So -0.0 gives
// +0.0 (sign(-0.0) is 0), a negative y that rounds to zero gives -0.0, and
// NaN stays NaN.
QAT_HOST_DEVICE float e2m1_round(float y) {
  const float m = e2m1_value(static_cast<uint8_t>(e2m1_index(abs_bits(y))));
  return y != y ? y : (y < 0.0f ? -m : m);
}

// The code of y (float -> e2m1: half to even, saturating at +-6) as
// compressed-tensors stores it: cast_to_fp4, then pack_fp4_to_uint8
// (compressors/nvfp4/helpers.py), whose sign bit is torch.signbit of the
// rounded value and whose index comes from (value * 2).to(int8). So -0.0 gives
// code 0 (cast_to_fp4 made it +0.0), a small negative y code 8, and NaN code 0
// (its rounded value is a positive NaN, and x86-64's float-to-int conversion
// of NaN gives 0 in the low byte). ml_dtypes' float4_e2m1fn cast agrees
// elsewhere (on every float the test sweeps; it gives 8 for -0.0 and NaN).
QAT_HOST_DEVICE uint8_t e2m1_code(float y) {
  return static_cast<uint8_t>(e2m1_index(abs_bits(y)) | (y < 0.0f ? 8u : 0u));
}

// e2m1 fake-quant of x with the float scale s (the block's scale, NVFP4's
// already divided by the global scale): _quantize_dequantize
// (quantization/lifecycle/forward_helpers.py) with the zero point 0 that
// calculate_qparams returns, so y = x / s + 0.0, x' = cast_to_fp4(clamp(y, -6,
// 6)) * s. The mask is |y| <= 6 (NaN: 0).
QAT_HOST_DEVICE AffineQuantized fake_quant_e2m1(float x, float scale) {
  // The + 0.0 changes nothing here (e2m1_round already maps -0.0 to +0.0);
  // it is kept as compressed-tensors' operation, which matters for MXFP8.
  const float y = x / scale + 0.0f;
  return {e2m1_round(y) * scale, abs_bits(y) <= 6.0f};
}

// ---------------------------------------------------------------------------------------------
// E8M0: an unsigned biased exponent, 2^(code - 127); code 0 is 2^-127 (a
// float32 subnormal), 0xFF is NaN (OCP MX spec; ml_dtypes.float8_e8m0fnu,
// torch.float8_e8m0fnu).
// ---------------------------------------------------------------------------------------------

// As torch.float8_e8m0fnu (c10::Float8_e8m0fnu) and ml_dtypes read it; NaN is
// returned as the quiet NaN 0x7FC00000 (c10 returns 0x7F800001).
QAT_HOST_DEVICE float e8m0_decode(uint8_t code) {
  return code == 0xFFu ? bits_float(0x7FC00000u)
      : code == 0u     ? bits_float(0x00400000u)
                       : bits_float(uint32_t{code} << 23);
}

// float -> e8m0 as c10's fp8e8m0fnu_from_fp32_value
// (torch/headeronly/util/Float8_e8m0fnu.h) casts: the float's exponent field
// rounded to nearest on its mantissa, ties up for normal floats (the implied
// bit is the LSB) and down for subnormals; the sign is ignored; +-inf and NaN
// give 0xFF; a result of 0xFF (from 1.5 * 2^127 up) is NaN. 0 and floats below
// 2^-127 give 0. ml_dtypes' cast agrees on positive floats (every one the
// test sweeps; it gives NaN for 0 and negatives).
QAT_HOST_DEVICE uint8_t e8m0_encode(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t exponent = (bits >> 23) & 0xFFu;
  if (exponent == 0xFFu)
    return 0xFFu;
  const bool guard = (bits & 0x400000u) != 0u;
  const bool rest = (bits & 0x3FFFFFu) != 0u; // round and sticky bits
  const bool lsb = exponent > 0u;
  return static_cast<uint8_t>(exponent + (guard && (rest || lsb) ? 1u : 0u));
}

// ---------------------------------------------------------------------------------------------
// MX scales (MXFP4, MXFP8), compressed-tensors' rules
// (quantization/utils/mxfp_utils.py, compressors/mx_utils.py).
// ---------------------------------------------------------------------------------------------

// floor(log2(max)) of the element type: its largest finite value is within
// [2^emax, 2^(emax + 1)). _MX_ELEM_OFFSET: 2 for e2m1 (6), 8 for e4m3fn (448).
constexpr int kE2m1Emax = 2;
constexpr int kE4m3Emax = 8;

// The scale's exponent code (127 + log2 of the scale, 0..255) for a block
// whose largest magnitude is amax (>= 0, the sign bit is ignored), as
// calculate_qparams computes it through generate_mx_scales:
//   round_to_power_2(amax, FP4_E2M1_DATA.mantissa): on the float32 bits,
//     (bits + 2^21) & 0xFF800000: amax rounds up to the next power of two from
//     1.75 * 2^e, else down (generate_mx_scales passes e2m1's one mantissa bit
//     for MXFP8 too, only MXFP6 passes its own);
//   127 + floor(log2(that)) - emax, clamped to [0, 255] (round_to_quantized_
//     type_dtype to uint8).
// So amax = 0 (and amax below 1.75 * 2^-126) gives 0, and amax from
// 1.75 * 2^127 up (inf included) rounds to inf and gives 255.
// A NaN amax is taken as the quiet NaN 0x7FC00000, whose bits round to inf:
// 255 too (the block fake-quantizes to NaN throughout). That is what
// compressed-tensors computes where ATen's elementwise loops run scalar code
// (a tensor's last few blocks; and, not checked here, the CUDA kernels, which
// pass the NaN operand on). Its AVX2 / AVX-512 loops (torch.min, torch.max
// with a NaN in calculate_qparams) turn the NaN into 0xFFFFFFFF, whose bits
// wrap in round_to_power_2's int32 sum to -0.0: code 0, the scale 2^-127.
// Payloads from 0x7FE00000 up would wrap too; qat ignores the payload.
QAT_HOST_DEVICE uint8_t mx_scale_code(float amax, int element_emax) {
  uint32_t bits = float_bits(amax) & 0x7FFFFFFFu;
  bits = amax != amax ? 0x7FC00000u : bits;
  const uint32_t power = ((bits + (1u << 21)) & 0xFF800000u) >> 23;
  if (power == 0xFFu)
    return 0xFFu; // log2(inf) = inf, clamped to 255
  const int code = static_cast<int>(power) - element_emax; // power 0: -inf
  return power == 0u || code < 0 ? uint8_t{0} : static_cast<uint8_t>(code);
}

// The float scale of an exponent code, as maybe_convert_from_mx_exp computes
// it (2.0 ** (code - 127) in float32): code 0 is 2^-127, 255 is 2^128 = inf
// (not NaN, as e8m0_decode reads 0xFF). A block with an inf scale
// fake-quantizes to NaN throughout (x / inf = 0, 0 * inf = NaN), as
// compressed-tensors' does. compressed-tensors never replaces an MX scale by
// its eps, since none is 0.
QAT_HOST_DEVICE float mx_scale_value(uint8_t code) {
  return code == 0xFFu ? bits_float(0x7F800000u)
      : code == 0u     ? bits_float(0x00400000u)
                       : bits_float(uint32_t{code} << 23);
}

// The byte the checkpoint's weight_scale stores for an exponent code:
// compress_mx_scale (compressors/mx_utils.py), 127 + floor(log2(scale))
// .to(int32) .to(uint8), gives the code back, except for the inf scale of
// code 255: on x86-64 torch casts inf to INT_MIN, and 127 + INT_MIN ends in
// the byte 127 (2^0 = 1, as decompress_mx_scale reads it back).
QAT_HOST_DEVICE uint8_t mx_stored_scale(uint8_t code) {
  return code == 0xFFu ? uint8_t{127} : code;
}

// e4m3fn fake-quant of x with the float scale s (MXFP8's elements):
// _quantize_dequantize with y = x / s + 0.0, x' = e4m3fn(clamp(y, -448, 448))
// * s, the cast rounding half to even (round_to_quantized_type_args). The
// mask is |y| <= 448 (NaN: 0). quant_math.h's fake_quant_fp8 is the same
// without the + 0.0 (it keeps -0.0).
QAT_HOST_DEVICE AffineQuantized fake_quant_mxfp8(float x, float scale) {
  const float y = x / scale + 0.0f;
  return {
      fp8_round_trip<Fp8Format::e4m3fn>(y) * scale,
      abs_bits(y) <= Fp8Traits<Fp8Format::e4m3fn>::kMax};
}

// The e4m3fn code of y as torch's cast (c10) writes it: fp8_encode's, except
// that a NaN keeps its sign (0x7F or 0xFF). In range (compressed-tensors
// clamps to +-448 first) fp8_encode is c10's cast.
QAT_HOST_DEVICE uint8_t e4m3_code_c10(float y) {
  const uint8_t code = fp8_code<Fp8Format::e4m3fn>(y);
  return y != y ? static_cast<uint8_t>(0x7Fu | ((float_bits(y) >> 24) & 0x80u))
                : code;
}

// ---------------------------------------------------------------------------------------------
// NVFP4 scales, compressed-tensors' rules (quantization/utils/helpers.py).
// ---------------------------------------------------------------------------------------------

// The global scale of a tensor whose largest magnitude is amax (>= 0, NaN if
// the tensor has a NaN): generate_gparam,
//   FP8_E4M3_DATA.max * FP4_E2M1_DATA.max / clamp(amax, min=FLT_MIN)
// where the Python float 2688 divided by a tensor is torch's __rtruediv__,
// amax.reciprocal() * 2688: two float32 roundings (not one division, which
// differs in the last bit for about a quarter of the amaxes); then
// torch.nan_to_num(nan=1, posinf=1, neginf=1): a NaN amax, an all-zero tensor
// and amax below 2688 / FLT_MAX (7.9e-36) give 1; an infinite amax gives 0.
QAT_HOST_DEVICE float nvfp4_global_scale(float amax) {
  constexpr float kFltMin = 1.17549435e-38f;
  const float clamped = amax < kFltMin ? kFltMin : amax; // NaN stays NaN
  const float g = (1.0f / clamped) * (448.0f * 6.0f);
  return g != g || abs_bits(g) == bits_float(0x7F800000u) ? 1.0f : g;
}

// The e4m3fn code of the scale of a 16-value block whose largest magnitude is
// amax (NaN if the block has a NaN), under the global scale g:
// calculate_qparams with the NVFP4 preset's arguments,
//   s = g * (amax / 6)        (max_val_pos / (bit_range / 2), bit_range 12;
//                              then global_scale * scales)
//   round_to_quantized_type_dtype(s, float8_e4m3fn): clamp to +-448, cast
//                              (half to even, subnormal e4m3 scales kept)
//   a zero scale is replaced by _get_dtype_eps(float8_e4m3fn) = 0.125 (0x20)
// A NaN scale keeps its sign, as c10's cast does: a NaN amax (positive, from
// max_magnitude) gives 0x7F (compressed-tensors on a CPU: 0x7F where ATen's
// loops run scalar code, 0xFF where they run AVX code, see mx_scale_code; the
// block is NaN throughout either way); the global scale 0 of a tensor with an
// infinity times an infinite amax gives the platform's default NaN, on x86-64
// negative: 0xFF, as compressed-tensors writes on x86-64.
QAT_HOST_DEVICE uint8_t nvfp4_scale_code(float amax, float global_scale) {
  const float s = global_scale * (amax / 6.0f);
  const uint8_t code = e4m3_code_c10(s);
  return (code & 0x7Fu) == 0u ? uint8_t{0x20} : code;
}

// The float scale that divides the block's values: scale / global_scale
// (_quantize_dequantize, _quantize and _dequantize all divide).
QAT_HOST_DEVICE float nvfp4_scale_value(uint8_t code, float global_scale) {
  return fp8_value<Fp8Format::e4m3fn>(code) / global_scale;
}

// ---------------------------------------------------------------------------------------------
// The three formats behind one interface, for kernels that loop over blocks.
// ---------------------------------------------------------------------------------------------

QAT_HOST_DEVICE int microscale_block_size(MicroscaleFormat f) {
  return f == MicroscaleFormat::nvfp4 ? 16 : 32;
}

// The scale code of a block whose largest magnitude (NaN propagating:
// max_magnitude in quant_math.h) is amax: NVFP4's e4m3fn code under the
// global scale, or the MX exponent code (global_scale unused).
QAT_HOST_DEVICE uint8_t
microscale_scale_code(MicroscaleFormat f, float amax, float global_scale) {
  return f == MicroscaleFormat::nvfp4
      ? nvfp4_scale_code(amax, global_scale)
      : mx_scale_code(
            amax, f == MicroscaleFormat::mxfp4 ? kE2m1Emax : kE4m3Emax);
}

// The float scale of a code, the divisor of the block's values.
QAT_HOST_DEVICE float microscale_scale_value(
    MicroscaleFormat f,
    uint8_t code,
    float global_scale) {
  return f == MicroscaleFormat::nvfp4 ? nvfp4_scale_value(code, global_scale)
                                      : mx_scale_value(code);
}

QAT_HOST_DEVICE AffineQuantized
microscale_fake_quant(MicroscaleFormat f, float x, float scale) {
  return f == MicroscaleFormat::mxfp8 ? fake_quant_mxfp8(x, scale)
                                      : fake_quant_e2m1(x, scale);
}

// The element code the checkpoint stores for x under the float scale s:
//   NVFP4, MXFP4: quantize_and_pack_fp4's CPU path (compressors/nvfp4/
//     helpers.py): quantize(x, scale, global_scale) with no zero point (the
//     presets are symmetric), so y = x / s (no + 0.0), then e2m1_code(clamp(y));
//   MXFP8: NaiveQuantizationCompressor.compress (compressors/naive_quantized/
//     base.py): quantize(..., zero_point, dtype=float8_e4m3fn) with the zero
//     zero point a module carries (initialize's force_zero_point), so y = x / s
//     + 0.0, then the e4m3fn cast of clamp(y, -448, 448).
QAT_HOST_DEVICE uint8_t
microscale_element_code(MicroscaleFormat f, float x, float scale) {
  if (f == MicroscaleFormat::mxfp8) {
    const float y = x / scale + 0.0f;
    return e4m3_code_c10(y);
  }
  return e2m1_code(x / scale);
}

QAT_HOST_DEVICE float microscale_element_value(
    MicroscaleFormat f,
    uint8_t code) {
  return f == MicroscaleFormat::mxfp8 ? fp8_value<Fp8Format::e4m3fn>(code)
                                      : e2m1_value(code);
}

// The byte of weight_scale for a scale code: NVFP4's e4m3fn code as is
// (_compress_scale: scale.to(float8_e4m3fn)), MX: mx_stored_scale.
QAT_HOST_DEVICE uint8_t
microscale_stored_scale(MicroscaleFormat f, uint8_t code) {
  return f == MicroscaleFormat::nvfp4 ? code : mx_stored_scale(code);
}

// The float scale of a stored scale byte, as decompression reads it: NVFP4
// e4m3fn / global_scale; MX decompress_mx_scale's 2^(byte - 127).
QAT_HOST_DEVICE float microscale_stored_scale_value(
    MicroscaleFormat f,
    uint8_t byte,
    float global_scale) {
  return microscale_scale_value(f, byte, global_scale);
}

} // namespace QAT_KERNELS_ABI
} // namespace qat::kernels
