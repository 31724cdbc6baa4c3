// Scalar quantization formulas shared by host and device code. No Torch, no
// allocation: every kernel in kernels/ref and kernels/cuda is a loop around
// these functions, so a number computed on the CPU and on the GPU goes through
// the same arithmetic.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#define QAT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QAT_HOST_DEVICE inline
#endif

// The kernels in kernels/ref are compiled once per instruction set (see
// fake_quant_fast.cpp). Each build puts these inline functions in its own
// inline namespace (QAT_KERNELS_ABI), so the linker can never merge an AVX-512
// copy into code meant for any x86-64 CPU.
#ifndef QAT_KERNELS_ABI
#define QAT_KERNELS_ABI abi_generic
#endif

namespace qat::kernels {

// bfloat16 storage: the upper half of an IEEE float, with the layout of
// c10::BFloat16.
struct BFloat16 {
  uint16_t bits;
};

enum class Fp8Format : int { e4m3fn = 0, e5m2 = 1 };

// Code formats of the simulated matmuls (see MatmulCodec below).
enum class MatmulFormat : int { int8 = 0, e4m3fn = 1 };

// Results of one element.
struct AffineQuantized {
  float value;
  bool in_range;
};

struct LsqGrad {
  float dx;
  float dscale;
  float dzero_point;
};

inline namespace QAT_KERNELS_ABI {

QAT_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

QAT_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// ---------------------------------------------------------------------------------------------
// bfloat16 conversion. From float it rounds to nearest even and turns every NaN
// into the quiet NaN 0x7FC0, exactly as c10::BFloat16 does.
// ---------------------------------------------------------------------------------------------

QAT_HOST_DEVICE float to_float(float x) {
  return x;
}
QAT_HOST_DEVICE float to_float(BFloat16 x) {
  return bits_float(uint32_t{x.bits} << 16);
}

QAT_HOST_DEVICE uint16_t bf16_bits_from_float(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return x != x ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

template <typename T>
QAT_HOST_DEVICE T from_float(float x);
template <>
QAT_HOST_DEVICE float from_float<float>(float x) {
  return x;
}
template <>
QAT_HOST_DEVICE BFloat16 from_float<BFloat16>(float x) {
  return BFloat16{bf16_bits_from_float(x)};
}

// Round half to even under the default rounding mode, as std::nearbyint and
// CUDA's rintf do. |x| >= 2^23 is already an integer; below that, adding and
// subtracting 2^23 (with the sign of x) leaves the float unit to round: the
// same result as nearbyint, but a plain add that the auto-vectoriser turns into
// SIMD where nearbyint would be a libm call per element.
QAT_HOST_DEVICE float round_half_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  constexpr float kTwo23 = 8388608.0f;
  const uint32_t sign = float_bits(x) & 0x80000000u;
  const float magnitude = bits_float(float_bits(x) & 0x7FFFFFFFu);
  const float shift = x < 0.0f ? -kTwo23 : kTwo23;
  // The sign is put back so that -0.4 rounds to -0.0, as nearbyint does.
  const float rounded = bits_float(float_bits((x + shift) - shift) | sign);
  return magnitude < kTwo23 ? rounded : x;
#endif
}

// Rounds y = x * inv_scale to its code, half to even, inside the fake-quant
// formulas. |y| > 2^22 is clamped to 2^22 first: such values lie far outside
// every code range (the op layer keeps |qmin|, |qmax|, |zero_point| <= 2^16),
// so neither the result nor the mask changes, and what is left rounds with one
// add and one subtract of 1.5 * 2^23, where the float spacing is exactly 1.
// NaN passes through. Where the CPU has a rounding instruction (SSE4.1 and up)
// and on the device, the plain rounding is one instruction already.
QAT_HOST_DEVICE float round_code(float y) {
#if defined(__CUDA_ARCH__)
  return rintf(y);
#elif defined(__SSE4_1__)
  // One (v)roundps in the AVX2 / AVX-512 kernel builds.
  return __builtin_nearbyintf(y);
#else
  constexpr float kTwo22 = 4194304.0f;
  constexpr float kMagic = 12582912.0f;
  y = y < -kTwo22 ? -kTwo22 : y;
  y = y > kTwo22 ? kTwo22 : y;
  return (y + kMagic) - kMagic;
#endif
}

// ---------------------------------------------------------------------------------------------
// Integer affine fake-quant, with the float arithmetic of ATen's
// fake_quantize_per_tensor_affine (inv_scale = 1.0f / scale):
//
//   q  = zero_point + round_half_even(x * inv_scale)
//   x' = (clamp(q, qmin, qmax) - zero_point) * scale
//   mask = qmin <= q <= qmax      (where false, the straight-through gradient
//                                  is zero)
//
// NaN propagates (x' = NaN, mask = 0) so that a diverging run stays visible;
// ATen maps NaN to qmin. +-inf and huge values saturate with mask 0.
// ---------------------------------------------------------------------------------------------
QAT_HOST_DEVICE AffineQuantized fake_quant_affine(
    float x,
    float scale,
    float inv_scale,
    int32_t zero_point,
    int32_t qmin,
    int32_t qmax) {
  const float zp = static_cast<float>(zero_point);
  const float lo = static_cast<float>(qmin);
  const float hi = static_cast<float>(qmax);
  const float q = zp + round_code(x * inv_scale);
  // Written as ternaries in this order so that NaN falls through both and
  // propagates.
  float clamped = q < lo ? lo : q;
  clamped = clamped > hi ? hi : clamped;
  return {(clamped - zp) * scale, q >= lo && q <= hi};
}

// LSQ / LSQ+ gradients of one element (Esser et al. 2020; Bhalgat et al.
// 2020), with the float operations in the order of ATen's
// fake_quantize_learnable_*_grad kernels so that each term is bit-identical.
// With q = zero_point + round(x / s) and x' = (clamp(q) - zero_point) * s:
//
//   dx          = dy                        if qmin <= q <= qmax, else 0
//   dscale      = dy * (x' - x) / s         if qmin <= q <= qmax
//               = dy * (qmin - zero_point)  if q < qmin
//               = dy * (qmax - zero_point)  if q > qmax
//   dzero_point = 0                         if qmin <= q <= qmax
//               = -dy * s                   otherwise
//
// both parameter gradients times grad_factor (LSQ's 1 / sqrt(numel * qmax),
// or 1). A NaN x counts as above the range. ATen's backward rounds
// `zero_point + x * inv_scale` where its forward rounds `x * inv_scale` and
// then adds; this uses the forward's rule so that the gradient mask always
// equals the forward mask (the two differ only on exact .5 ties with an odd
// zero point).
QAT_HOST_DEVICE LsqGrad lsq_grad(
    float x,
    float dy,
    float scale,
    float inv_scale,
    int32_t zero_point,
    int32_t qmin,
    int32_t qmax,
    float grad_factor) {
  const float zp = static_cast<float>(zero_point);
  const float lo = static_cast<float>(qmin);
  const float hi = static_cast<float>(qmax);
  const float q = zp + round_code(x * inv_scale);
  if (q >= lo && q <= hi) {
    const float x_fq = (q - zp) * scale;
    return {dy, dy * (x_fq - x) * inv_scale * grad_factor, 0.0f};
  }
  const float edge = q < lo ? lo - zp : hi - zp;
  return {dy * 0.0f, dy * edge * grad_factor, dy * -1.0f * scale * grad_factor};
}

// ---------------------------------------------------------------------------------------------
// FP8. Two formats of the OCP FP8 spec, as c10::Float8_e4m3fn and
// c10::Float8_e5m2:
//   e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN, largest finite 448
//   e5m2:   bias 15, IEEE-like, 0x7C is inf, largest finite 57344
// Encoding saturates (|x| > max gives +-max, inf gives +-max) and rounds to
// nearest even; in range it is bit-identical to the c10 casts. NaN encodes to
// the format's NaN.
// ---------------------------------------------------------------------------------------------
template <Fp8Format F>
struct Fp8Traits;
template <>
struct Fp8Traits<Fp8Format::e4m3fn> {
  static constexpr int kExponentBits = 4, kMantissaBits = 3, kBias = 7;
  static constexpr float kMax = 448.0f;
  static constexpr uint8_t kNaN = 0x7F;
};
template <>
struct Fp8Traits<Fp8Format::e5m2> {
  static constexpr int kExponentBits = 5, kMantissaBits = 2, kBias = 15;
  static constexpr float kMax = 57344.0f;
  static constexpr uint8_t kNaN = 0x7F;
};

template <Fp8Format F>
QAT_HOST_DEVICE uint8_t fp8_encode(float x) {
  using Tr = Fp8Traits<F>;
  constexpr int kShift = 23 - Tr::kMantissaBits;
  // Smallest normal of the format, as float bits: exponent field 1.
  constexpr uint32_t kMinNormalBits = uint32_t(127 - Tr::kBias + 1) << 23;
  if (x != x)
    return Tr::kNaN;
  const uint32_t sign = (float_bits(x) >> 24) & 0x80u;
  float magnitude =
      bits_float(float_bits(x) & 0x7FFFFFFFu); // also right for -0.0
  magnitude =
      magnitude > Tr::kMax ? Tr::kMax : magnitude; // saturate, inf included
  const uint32_t a = float_bits(magnitude);
  uint32_t code;
  if (a >= kMinNormalBits) {
    // Round the 23-bit mantissa to kMantissaBits, half to even; a carry moves
    // into the exponent, which is right, and cannot pass kMax because kMax is
    // representable.
    const uint32_t rounded =
        (a + ((1u << (kShift - 1)) - 1u) + ((a >> kShift) & 1u)) >> kShift;
    code = rounded - (uint32_t(127 - Tr::kBias) << Tr::kMantissaBits);
  } else {
    // Subnormal range: count units of the smallest subnormal 2^(1 - bias - M);
    // scaling by a power of two is exact, and a result of 2^M is the smallest
    // normal's code, also right.
    constexpr float kInvSubnormalUnit =
        float(1u << (Tr::kBias - 1 + Tr::kMantissaBits));
    code =
        static_cast<uint32_t>(round_half_even(magnitude * kInvSubnormalUnit));
  }
  return static_cast<uint8_t>(sign | code);
}

template <Fp8Format F>
QAT_HOST_DEVICE float fp8_decode(uint8_t code) {
  using Tr = Fp8Traits<F>;
  constexpr uint32_t kMantissaMask = (1u << Tr::kMantissaBits) - 1u;
  constexpr uint32_t kExponentMax = (1u << Tr::kExponentBits) - 1u;
  const uint32_t sign = uint32_t(code & 0x80u) << 24;
  const uint32_t exponent = (code >> Tr::kMantissaBits) & kExponentMax;
  const uint32_t mantissa = code & kMantissaMask;
  if constexpr (F == Fp8Format::e4m3fn) {
    if ((code & 0x7Fu) == 0x7Fu)
      return bits_float(0x7FC00000u | sign);
  } else {
    if (exponent == kExponentMax)
      return bits_float((mantissa ? 0x7FC00000u : 0x7F800000u) | sign);
  }
  if (exponent == 0) {
    constexpr float kSubnormalUnit =
        1.0f / float(1u << (Tr::kBias - 1 + Tr::kMantissaBits));
    const float magnitude = static_cast<float>(mantissa) * kSubnormalUnit;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(
      sign | ((exponent + 127u - Tr::kBias) << 23) |
      (mantissa << (23 - Tr::kMantissaBits)));
}

// fp8_encode and fp8_decode where sm_89 and later GPUs have one instruction
// each, rounding to nearest even and saturating as fp8_encode does (checked on
// every bfloat16 bit pattern by tests/test_cuda.cpp); NaN stays NaN (the
// instruction may keep its sign bit).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
template <Fp8Format F>
constexpr __nv_fp8_interpretation_t kCudaFp8 =
    F == Fp8Format::e4m3fn ? __NV_E4M3 : __NV_E5M2;
#endif

template <Fp8Format F>
QAT_HOST_DEVICE uint8_t fp8_code(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, kCudaFp8<F>);
#else
  return fp8_encode<F>(x);
#endif
}

template <Fp8Format F>
QAT_HOST_DEVICE float fp8_value(uint8_t code) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  return __half2float(__nv_cvt_fp8_to_halfraw(code, kCudaFp8<F>));
#else
  return fp8_decode<F>(code);
#endif
}

// decode(encode(x)).
template <Fp8Format F>
QAT_HOST_DEVICE float fp8_round_trip(float x) {
  return fp8_value<F>(fp8_code<F>(x));
}

// FP8 fake-quant with a scale: x' = decode(encode(x / scale)) * scale. The mask
// is |x / scale| <= max: saturated values get no straight-through gradient. NaN
// propagates.
template <Fp8Format F>
QAT_HOST_DEVICE AffineQuantized fake_quant_fp8(float x, float scale) {
  const float scaled = x / scale;
  const float magnitude = scaled < 0.0f ? -scaled : scaled;
  return {fp8_round_trip<F>(scaled) * scale, magnitude <= Fp8Traits<F>::kMax};
}

// ---------------------------------------------------------------------------------------------
// IEEE half precision, for the scales GGUF stores: float -> nearest half (half
// to even, subnormals kept, overflow to infinity, NaN stays NaN), as F16C's
// vcvtps2ph, CUDA's __float2half_rn, numpy's astype(float16) and c10::Half do.
// ---------------------------------------------------------------------------------------------

QAT_HOST_DEVICE uint16_t half_bits_from_float(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u)
    return sign | 0x7E00u; // NaN
  if (a >= 0x477FF000u)
    return sign | 0x7C00u; // 65520 and up round to infinity
  if (a >= 0x38800000u) {
    // Normal half: round the mantissa to 10 bits, half to even (a carry into
    // the exponent is right), then rebias the exponent from 127 to 15.
    const uint32_t rounded = a + 0x0FFFu + ((a >> 13) & 1u);
    return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  }
  // Subnormal half: units of 2^-24, half to even; 2^-25 and below go to zero
  // (2^-25 itself ties to the even 0), and 0x400 is the smallest normal.
  const uint32_t exponent = a >> 23;
  if (exponent < 102u)
    return sign;
  const uint32_t mantissa = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exponent; // 14..24
  uint32_t code = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (code & 1u)))
    ++code;
  return sign | static_cast<uint16_t>(code);
}

QAT_HOST_DEVICE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) // infinity, or NaN made quiet (as c10::Half does)
    return bits_float(
        sign | 0x7F800000u | (mantissa ? 0x400000u | (mantissa << 13) : 0u));
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// ---------------------------------------------------------------------------------------------
// GGUF block quantization: ggml's 32-value blocks Q8_0, Q4_0, Q5_0 and Q5_1,
// with the rules of its quantize_row_q*_ref (and gguf-py's numpy port), so
// that a model trained with them exports to GGUF with no further loss. Each
// block of 32 consecutive values has one scale d (and Q5_1 a minimum m),
// stored as IEEE halves:
//
//   Q8_0  d = max|x| / 127,  q = roundf(x * (1 / d))  (half away from zero),
//         q in [-127, 127],  x' = q * half(d)
//   Q4_0  d = v / -8 where v is the value of largest magnitude (the first, on
//         ties; d may be negative),  q = min(15, trunc(x * (1 / d) + 8.5)),
//         x' = (q - 8) * half(d)
//   Q5_0  as Q4_0 with 5 bits: d = v / -16,  q = min(31, trunc(x * (1 / d) +
//         16.5)),  x' = (q - 16) * half(d)
//   Q5_1  d = (max - min) / 31,  q = trunc((x - min) * (1 / d) + 0.5),
//         x' = q * half(d) + half(min)
//
// Codes are computed with the float d (and min) and dequantized with the
// stored halves; 1 / d is 0 where d is 0. x * (1 / d) + 8.5 rounds twice (no
// FMA: ggml's reference, numpy and our kernels agree only without
// contraction). Q5_1's q * half(d) is exact (5 by 11 significant bits), so
// its + half(min) rounds once with or without FMA. Only Q4_0 and Q5_0 clip:
// the positive end of a block whose largest magnitude is negative can reach
// code 16 (32); such values get no straight-through gradient. NaN values do
// not enter the scale and stay NaN.
//
// The K-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256) share the GgufType
// enum; their rules are in kernels/ref/gguf_kquant_ref.h.
// ---------------------------------------------------------------------------------------------

enum class GgufType : int {
  q8_0 = 0,
  q4_0 = 1,
  q5_0 = 2,
  q5_1 = 3,
  q4_k = 4,
  q5_k = 5,
  q6_k = 6,
};
constexpr int kGgufBlockSize = 32;

QAT_HOST_DEVICE bool gguf_is_kquant(GgufType type) {
  return type == GgufType::q4_k || type == GgufType::q5_k ||
      type == GgufType::q6_k;
}

struct GgufBlock {
  uint16_t d_bits;              // the stored half scale
  uint16_t m_bits;              // Q5_1: the stored half minimum (else 0)
  int8_t codes[kGgufBlockSize]; // Q8_0: -127..127; Q4_0: 0..15; Q5_*: 0..31
  uint32_t in_range;            // bit j: x[j] was not clipped (nor NaN)
};

// The code that stands for zero (Q4_0, Q5_0) or 0 (Q8_0 is signed, Q5_1
// offsets by its minimum).
QAT_HOST_DEVICE int gguf_code_offset(GgufType type) {
  return type == GgufType::q4_0 ? 8 : (type == GgufType::q5_0 ? 16 : 0);
}

// One 32-value block (Q8_0, Q4_0, Q5_0 or Q5_1), as ggml stores it.
template <typename T>
QAT_HOST_DEVICE GgufBlock gguf_quantize_block(GgufType type, const T* x) {
  float magnitude = 0.0f, largest = 0.0f;
  float low = 3.40282347e+38f, high = -3.40282347e+38f; // ggml: FLT_MAX
  for (int j = 0; j < kGgufBlockSize; ++j) {
    const float v = to_float(x[j]);
    const float m = v < 0.0f ? -v : v;
    if (m > magnitude) { // NaN never compares greater
      magnitude = m;
      largest = v;
    }
    low = v < low ? v : low;
    high = v > high ? v : high;
  }
  const bool minimum = type == GgufType::q5_1;
  const float d = type == GgufType::q8_0 ? magnitude / 127.0f
      : minimum                          ? (high - low) / 31.0f
                : largest / -static_cast<float>(gguf_code_offset(type));
  const float inv_d = d != 0.0f ? 1.0f / d : 0.0f;
  GgufBlock block{
      half_bits_from_float(d),
      minimum ? half_bits_from_float(low) : uint16_t(0),
      {},
      0u};
  const float max_code = type == GgufType::q4_0 ? 15.0f : 31.0f;
  for (int j = 0; j < kGgufBlockSize; ++j) {
    const float v = to_float(x[j]);
    const float scaled = (minimum ? v - low : v) * inv_d;
    float code;
    bool in_range;
    if (type == GgufType::q8_0) {
      code = roundf(scaled);
      in_range = code >= -127.0f && code <= 127.0f;
      code = code < -127.0f ? -127.0f : (code > 127.0f ? 127.0f : code);
    } else {
      const float shifted = scaled +
          (minimum ? 0.5f : static_cast<float>(gguf_code_offset(type)) + 0.5f);
      code = truncf(shifted);
      in_range = code >= 0.0f && code <= max_code;
      code = code < 0.0f ? 0.0f : (code > max_code ? max_code : code);
    }
    block.codes[j] =
        in_range || scaled == scaled ? static_cast<int8_t>(code) : int8_t(0);
    block.in_range |= uint32_t(in_range) << j;
  }
  return block;
}

// x' of element j, NaN where x was NaN.
template <typename T>
QAT_HOST_DEVICE float gguf_dequantize(
    GgufType type,
    const GgufBlock& block,
    const T* x,
    int j) {
  const float v = to_float(x[j]);
  if (v != v)
    return v;
  const float d = half_bits_to_float(block.d_bits);
  if (type == GgufType::q5_1)
    return static_cast<float>(block.codes[j]) * d +
        half_bits_to_float(block.m_bits);
  return static_cast<float>(block.codes[j] - gguf_code_offset(type)) * d;
}

// Fake-quant of one block of 32: y = x', mask (may be null) = not clipped.
template <typename T>
QAT_HOST_DEVICE void gguf_fake_quant_block(
    GgufType type,
    const T* x,
    T* y,
    uint8_t* mask) {
  const GgufBlock block = gguf_quantize_block(type, x);
  for (int j = 0; j < kGgufBlockSize; ++j) {
    y[j] = from_float<T>(gguf_dequantize(type, block, x, j));
    if (mask)
      mask[j] = (block.in_range >> j) & 1u;
  }
}

// ---------------------------------------------------------------------------------------------
// Simulated matmuls (qat::quantize_rows, qat::qmatmul): both operands quantized
// row by row to int8 or e4m3fn codes with one float scale per row, multiplied
// on integer / FP8 arithmetic, and each sum dequantized with its two rows'
// scales:
//   out[m, n] = float(acc[m, n]) * (a_scale[m] * b_scale[n]) + bias[n]
// A code is the fake-quant formula's above (zero point 0), so code * scale is
// the fake-quantized value bit for bit, and the mask is the fake-quant mask.
// ---------------------------------------------------------------------------------------------

// NaN-propagating running maximum of |x| (m >= 0 or NaN): once a NaN is seen
// the result stays NaN, in any order of the elements.
QAT_HOST_DEVICE float max_magnitude(float m, float x) {
  const float a = bits_float(float_bits(x) & 0x7FFFFFFFu);
  return a > m || a != a ? a : m;
}

template <typename Code>
struct RowCode {
  Code code;
  bool in_range;
};

template <MatmulFormat F>
struct MatmulCodec;

// int8 [-128, 127], symmetric: the w8a8_int8 preset's per-token activations
// (and any signed symmetric weight of 8 bits or fewer, whose codes fit).
template <>
struct MatmulCodec<MatmulFormat::int8> {
  using Code = int8_t;
  using Acc = int32_t;
  // A dynamic scale is amax / 127, at least FLT_EPSILON, as qat's symmetric
  // observers compute it by default (SymmetricScale::qmax) and as vLLM's
  // dynamic int8 kernels do (NaN stays NaN, as in ATen's clamp).
  QAT_HOST_DEVICE static float row_scale(float amax) {
    const float scale = amax / 127.0f;
    return scale < 1.1920929e-7f ? 1.1920929e-7f : scale;
  }
  // fake_quant_affine with zero point 0 and [-128, 127]; NaN gets code 0 (and
  // mask 0).
  QAT_HOST_DEVICE static RowCode<int8_t> quantize(
      float x,
      float /*scale*/,
      float inv_scale) {
    const float q = round_code(x * inv_scale);
    float clamped = q < -128.0f ? -128.0f : q;
    clamped = clamped > 127.0f ? 127.0f : clamped;
    return {
        q == q ? static_cast<int8_t>(clamped) : int8_t{0},
        q >= -128.0f && q <= 127.0f};
  }
  QAT_HOST_DEVICE static float value(int8_t code) {
    return static_cast<float>(code);
  }
};

// e4m3fn, saturating: the fp8_e4m3 preset's weights and activations.
template <>
struct MatmulCodec<MatmulFormat::e4m3fn> {
  using Code = uint8_t;
  using Acc = float;
  QAT_HOST_DEVICE static float row_scale(float amax) {
    const float scale = amax / 448.0f;
    return scale < 1.1920929e-7f ? 1.1920929e-7f : scale;
  }
  // fake_quant_fp8's code and mask.
  QAT_HOST_DEVICE static RowCode<uint8_t> quantize(
      float x,
      float scale,
      float /*inv_scale*/) {
    const float scaled = x / scale;
    const float magnitude = scaled < 0.0f ? -scaled : scaled;
    return {
        fp8_code<Fp8Format::e4m3fn>(scaled),
        magnitude <= Fp8Traits<Fp8Format::e4m3fn>::kMax};
  }
  QAT_HOST_DEVICE static float value(uint8_t code) {
    return fp8_value<Fp8Format::e4m3fn>(code);
  }
};

QAT_HOST_DEVICE float dequantize_acc(
    float acc,
    float a_scale,
    float b_scale,
    float bias) {
  return acc * (a_scale * b_scale) + bias;
}

} // namespace QAT_KERNELS_ABI
} // namespace qat::kernels
