// Fast CPU kernels of the block formats (block_fast.h), bit-identical to
// microscale_ref.cpp, gguf_ref.cpp and gguf_kquant_ref.cpp. Compiled once per
// instruction set like fake_quant_fast.cpp (QAT_FAST_ISA, -O3
// -fno-trapping-math, and -ffp-contract=off like every kernel): each block is
// read into a local array before it is written (so y may be x); blocks go in
// chunks: first every block's maximum (or minimum), then the chunk's scales
// in one vectorised loop, then each block's values through a fixed-length
// loop with no branches, which GCC vectorises. Where the reference takes a
// branch or a table per value, these loops use an equivalent that is exact on
// every float:
//   - block maxima and minima as integer maxima of the float bits (the order
//     of non-negative floats, or of a key that orders signed floats; a NaN,
//     whose bits lie above inf's, is skipped or kept as the reference does);
//     Q4_0 / Q5_0's signed largest value is the first value of the largest
//     magnitude, as the reference's running comparison keeps it;
//   - e2m1 rounding as a sum of the threshold steps, e4m3fn and IEEE half
//     rounding on the float bits (normal range) or with the add / subtract of
//     a power of two whose spacing is the subnormal unit (2^14 for e4m3fn's
//     2^-9, 0.5 for the half's 2^-24);
//   - roundf and truncf on small integers through the exact float-to-int
//     conversion of a clamped value.
// Every product, quotient and sum the reference computes is computed here as
// the same single float operation, on the same operands.
#include <algorithm>

#include "kernels/ref/block_fast_isa.h"
#include "kernels/ref/gguf_kquant_ref.h"

#ifndef QAT_FAST_ISA
#error "compile with -DQAT_FAST_ISA=<isa>"
#endif

namespace qat::kernels {
inline namespace QAT_KERNELS_ABI {
namespace {

constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
constexpr uint32_t kSignMask = 0x80000000u;
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kQuietNaNBits = 0x7FC00000u;
constexpr float kFltMax = 3.40282347e+38f;

// ---------------------------------------------------------------------------------------------
// Microscale
// ---------------------------------------------------------------------------------------------

template <MicroscaleFormat F>
constexpr int kBlock = F == MicroscaleFormat::nvfp4 ? 16 : 32;

// The largest |v| of n values as float bits: NaN bits (above inf's) when one
// is NaN, not necessarily the reference's NaN (microscale_amax_ref returns
// the last one's magnitude), which no scale code depends on: mx_scale_code
// replaces a NaN amax by one quiet NaN, and nvfp4_scale_code reads only its
// sign, which is clear.
template <int N>
uint32_t max_abs_bits(const float* __restrict v) {
  uint32_t m = 0;
  for (int i = 0; i < N; ++i) {
    const uint32_t a = float_bits(v[i]) & kAbsMask;
    m = a > m ? a : m;
  }
  return m;
}

// e2m1_value(e2m1_index(a)): the index counts the thresholds a has passed,
// and each threshold adds the step to the next magnitude (exact sums of
// halves). NaN gives 0, as e2m1_index's.
inline float e2m1_magnitude(float a) {
  return (a > 0.25f ? 0.5f : 0.0f) + (a >= 0.75f ? 0.5f : 0.0f) +
      (a > 1.25f ? 0.5f : 0.0f) + (a >= 1.75f ? 0.5f : 0.0f) +
      (a > 2.5f ? 1.0f : 0.0f) + (a >= 3.5f ? 1.0f : 0.0f) +
      (a > 5.0f ? 2.0f : 0.0f);
}

// fp8_round_trip<e4m3fn>(q): fp8_decode(fp8_encode(q)). The magnitude is
// saturated at 448; from e4m3fn's smallest normal 2^-6 up, fp8_encode rounds
// the mantissa to 3 bits half to even and fp8_decode puts those bits back
// unchanged, so the value is the float's bits with the mantissa so rounded;
// below, fp8_encode counts units of 2^-9, half to even, which (mag + 2^14) -
// 2^14 rounds to. The sign is the code's sign bit; NaN decodes to the quiet
// NaN 0x7FC00000.
inline float e4m3_round_trip(float q) {
  const uint32_t qb = float_bits(q);
  float mag = bits_float(qb & kAbsMask);
  mag = mag > 448.0f ? 448.0f : mag;
  const uint32_t am = float_bits(mag);
  const uint32_t normal = (am + 0x7FFFFu + ((am >> 20) & 1u)) & 0xFFF00000u;
  const uint32_t subnormal = float_bits((mag + 16384.0f) - 16384.0f);
  const uint32_t r =
      (am >= 0x3C800000u ? normal : subnormal) | (qb & kSignMask);
  return q != q ? bits_float(kQuietNaNBits) : bits_float(r);
}

// One block's values under its float scale: microscale_fake_quant. The MX
// scales are powers of two from 2^-127 to 2^127, or inf: x * (1 / s) is x / s
// (both are the one rounding of the same real number, and for s = inf both
// give +-0, or the default NaN of inf * 0 and inf / inf, or x's NaN), and a
// product is cheaper than a quotient. NVFP4's scale is any float: divided.
template <MicroscaleFormat F, bool kMask>
void microscale_block(
    const float* __restrict v,
    float* __restrict y,
    uint8_t* __restrict mask,
    float scale,
    float inv_scale) {
  constexpr float kMax = F == MicroscaleFormat::mxfp8 ? 448.0f : 6.0f;
  for (int i = 0; i < kBlock<F>; ++i) {
    const float q =
        (F == MicroscaleFormat::nvfp4 ? v[i] / scale : v[i] * inv_scale) + 0.0f;
    const float a = bits_float(float_bits(q) & kAbsMask);
    float r;
    if constexpr (F == MicroscaleFormat::mxfp8) {
      r = e4m3_round_trip(q);
    } else {
      const float m = e2m1_magnitude(a);
      r = q < 0.0f ? -m : m;
      r = q != q ? q : r;
    }
    y[i] = r * scale;
    if constexpr (kMask)
      mask[i] = a <= kMax ? 1 : 0;
  }
}

// e4m3_code_c10(s) without branches: fp8_encode's rounding (the mantissa
// rounded on the float bits from the smallest normal 2^-6 up, below it units
// of 2^-9 counted by the low bits of mag + 2^14), and a NaN's sign kept.
inline uint32_t e4m3_code_bits(float s) {
  const uint32_t sb = float_bits(s);
  const uint32_t sign = (sb >> 24) & 0x80u;
  float mag = bits_float(sb & kAbsMask);
  mag = mag > 448.0f ? 448.0f : mag;
  const uint32_t am = float_bits(mag);
  const uint32_t normal =
      ((am + 0x7FFFFu + ((am >> 20) & 1u)) >> 20) - (120u << 3);
  const uint32_t subnormal = float_bits(mag + 16384.0f) - 0x46800000u;
  const uint32_t code = (am >= 0x3C800000u ? normal : subnormal) | sign;
  return s != s ? 0x7Fu | sign : code;
}

// fp8_decode<e4m3fn>(code) without branches.
inline float e4m3_value(uint32_t c) {
  const uint32_t sign = (c & 0x80u) << 24;
  const uint32_t e = (c >> 3) & 15u;
  const uint32_t m = c & 7u;
  const uint32_t normal = sign | ((e + 120u) << 23) | (m << 20);
  const uint32_t subnormal =
      float_bits(static_cast<float>(m) * (1.0f / 512.0f)) | sign;
  const uint32_t bits = (c & 0x7Fu) == 0x7Fu ? kQuietNaNBits | sign
      : e == 0u                              ? subnormal
                                             : normal;
  return bits_float(bits);
}

// microscale_scale_code(F, amax, global_scale) of a block whose largest
// magnitude has the bits amax (NaN: any NaN bits, see max_abs_bits).
template <MicroscaleFormat F>
inline uint32_t scale_code_bits(uint32_t amax, float global_scale) {
  if constexpr (F == MicroscaleFormat::nvfp4) {
    // nvfp4_scale_code: the product's operands as there.
    const float s = global_scale * (bits_float(amax) / 6.0f);
    const uint32_t code = e4m3_code_bits(s);
    return (code & 0x7Fu) == 0u ? 0x20u : code;
  } else {
    // mx_scale_code.
    constexpr int32_t kEmax =
        F == MicroscaleFormat::mxfp4 ? kE2m1Emax : kE4m3Emax;
    const uint32_t bits = amax > kInfBits ? kQuietNaNBits : amax;
    const uint32_t power = ((bits + (1u << 21)) & 0xFF800000u) >> 23;
    const int32_t code = static_cast<int32_t>(power) - kEmax;
    const uint32_t finite =
        power == 0u || code < 0 ? 0u : static_cast<uint32_t>(code);
    return power == 0xFFu ? 0xFFu : finite;
  }
}

// microscale_scale_value(F, code, global_scale).
template <MicroscaleFormat F>
inline float scale_value(uint32_t code, float global_scale) {
  if constexpr (F == MicroscaleFormat::nvfp4) {
    return e4m3_value(code) / global_scale;
  } else {
    return bits_float(
        code == 0xFFu    ? kInfBits
            : code == 0u ? 0x00400000u
                         : code << 23);
  }
}

// The blocks in chunks: every block's largest magnitude, then the chunk's
// codes and scales in one vectorised loop, then the values block by block.
// Each block is read into v before its values are written, and the chunk's
// maxima before any, so y may be x.
template <MicroscaleFormat F>
void microscale_blocks(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t blocks,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* scale_codes_out) {
  constexpr int N = kBlock<F>;
  constexpr int64_t kChunk = 64;
  uint32_t amax[kChunk], codes[kChunk];
  float scale[kChunk], inv_scale[kChunk];
  float v[N];
  for (int64_t b0 = 0; b0 < blocks; b0 += kChunk) {
    const int64_t n = std::min(kChunk, blocks - b0);
    if (scale_codes) {
      for (int64_t k = 0; k < n; ++k)
        codes[k] = scale_codes[b0 + k];
    } else {
      for (int64_t k = 0; k < n; ++k)
        amax[k] = max_abs_bits<N>(x + (b0 + k) * N);
      for (int64_t k = 0; k < n; ++k)
        codes[k] = scale_code_bits<F>(amax[k], global_scale);
    }
    for (int64_t k = 0; k < n; ++k) {
      scale[k] = scale_value<F>(codes[k], global_scale);
      inv_scale[k] = F == MicroscaleFormat::nvfp4 ? 0.0f : 1.0f / scale[k];
    }
    if (scale_codes_out) {
      for (int64_t k = 0; k < n; ++k)
        scale_codes_out[b0 + k] = static_cast<uint8_t>(codes[k]);
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t at = (b0 + k) * N;
      for (int i = 0; i < N; ++i)
        v[i] = x[at + i];
      if (mask)
        microscale_block<F, true>(v, y + at, mask + at, scale[k], inv_scale[k]);
      else
        microscale_block<F, false>(v, y + at, nullptr, scale[k], inv_scale[k]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF, 32-value blocks: gguf_quantize_block and gguf_dequantize
// ---------------------------------------------------------------------------------------------

constexpr int kG = kGgufBlockSize;

inline bool is_nan_bits(uint32_t u) {
  return (u & kAbsMask) > kInfBits;
}

// A key whose unsigned order is the float order, -0 below +0.
inline uint32_t order_key(uint32_t u) {
  return u & kSignMask ? ~u : u | kSignMask;
}
inline float from_order_key(uint32_t k) {
  return bits_float(k & kSignMask ? k & kAbsMask : ~k);
}

// Reductions over one block, each after a separate elementwise loop: GCC
// vectorises neither a reduction whose operand is a select nor one that its
// select would read twice.
inline uint32_t max_of(const uint32_t* __restrict w) {
  uint32_t m = 0;
  for (int j = 0; j < kG; ++j)
    m = w[j] > m ? w[j] : m;
  return m;
}
inline uint32_t min_of(const uint32_t* __restrict w) {
  uint32_t m = ~0u;
  for (int j = 0; j < kG; ++j)
    m = w[j] < m ? w[j] : m;
  return m;
}

// The first of the 32 values whose `key` (v itself, or |v|) equals `value`
// as a float (so either zero for a zero; one must), as v.
inline float first_equal(
    const float* __restrict v,
    const float* __restrict key,
    float value) {
  uint32_t index[kG];
  for (int j = 0; j < kG; ++j)
    index[j] = key[j] == value ? static_cast<uint32_t>(j) : uint32_t{kG};
  return v[std::min(min_of(index), uint32_t{kG - 1})];
}

// The block scale d (and Q5_1's minimum), as gguf_quantize_block's running
// comparisons find them.
template <GgufType Ty>
void gguf_block_scale(const float* __restrict v, float& d_out, float& low_out) {
  float d, low = 0.0f;
  if constexpr (Ty == GgufType::q5_1) {
    // low = v < low ? v : low from FLT_MAX and high = v > high ? v : high
    // from -FLT_MAX, NaN never taken: the extremes' values. Of equal values
    // (zeros of either sign) the reference keeps the first, this the
    // negative zero for low and the positive zero for high; no result sees
    // the difference: where high or low is a zero, high - low is the same
    // (+0 - -0 = +0 for a block of zeros, whose low and high are the same
    // value there), and so are (x - low) * inv_d's code and code * dh + mh
    // (code * dh + -0 = code * dh + +0, as code * dh is never -0).
    uint32_t lo_key[kG], hi_key[kG];
    for (int j = 0; j < kG; ++j) {
      const uint32_t u = float_bits(v[j]);
      const uint32_t k = order_key(u);
      const bool nan = is_nan_bits(u);
      lo_key[j] = nan ? ~0u : k;
      hi_key[j] = nan ? 0u : k;
    }
    low = from_order_key(
        std::min(min_of(lo_key), order_key(float_bits(kFltMax))));
    const float high = from_order_key(
        std::max(max_of(hi_key), order_key(float_bits(-kFltMax))));
    d = (high - low) / 31.0f;
  } else {
    // The largest magnitude, NaN never taken; for Q4_0 / Q5_0 the first
    // value of that magnitude (0.0 when it is 0).
    uint32_t abs_bits[kG];
    for (int j = 0; j < kG; ++j) {
      const uint32_t u = float_bits(v[j]);
      abs_bits[j] = is_nan_bits(u) ? 0u : u & kAbsMask;
    }
    const float magnitude = bits_float(max_of(abs_bits));
    if constexpr (Ty == GgufType::q8_0) {
      d = magnitude / 127.0f;
    } else {
      float abs_v[kG];
      for (int j = 0; j < kG; ++j)
        abs_v[j] = bits_float(float_bits(v[j]) & kAbsMask);
      const float largest =
          magnitude > 0.0f ? first_equal(v, abs_v, magnitude) : 0.0f;
      d = largest / -static_cast<float>(gguf_code_offset(Ty));
    }
  }
  d_out = d;
  low_out = low;
}

// half_bits_to_float(half_bits_from_float(f)) without branches: the mantissa
// rounded to 10 bits on the float bits (half to even, a carry moving into
// the exponent) for normal halves, 65520 and up to inf, below 2^-14 units of
// 2^-24 rounded by (|f| + 0.5) - 0.5, NaN the quiet NaN; the sign kept.
inline float half_round_trip(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t a = u & kAbsMask;
  const uint32_t normal = (a + 0x0FFFu + ((a >> 13) & 1u)) & 0xFFFFE000u;
  const uint32_t subnormal = float_bits((bits_float(a) + 0.5f) - 0.5f);
  uint32_t r = a >= 0x38800000u ? normal : subnormal;
  r = a >= 0x477FF000u ? kInfBits : r;
  r = a > kInfBits ? kQuietNaNBits : r;
  return bits_float(r | (u & kSignMask));
}

// A block's values under its scale: inv_d = 1 / d (0 where d is 0), dh and
// mh the stored halves of d and of Q5_1's minimum `low`, as floats.
template <GgufType Ty, bool kMask>
void gguf_block_values(
    const float* __restrict v,
    float* __restrict out,
    uint8_t* __restrict mask,
    float low,
    float inv_d,
    float dh,
    float mh) {
  for (int j = 0; j < kG; ++j) {
    const float x = v[j];
    int32_t code;
    bool in_range;
    if constexpr (Ty == GgufType::q8_0) {
      // roundf (half away from zero) of |scaled| below 256, by truncation
      // and the exact fraction; from 256 up only the clamp matters, and NaN
      // (inf * 0) gives code 0 out of range.
      const float scaled = x * inv_d;
      const bool number = scaled == scaled;
      float a = bits_float(float_bits(scaled) & kAbsMask);
      a = a < 256.0f ? a : 256.0f;
      a = number ? a : 0.0f;
      const int32_t t = static_cast<int32_t>(a);
      const int32_t r = t + (a - static_cast<float>(t) >= 0.5f ? 1 : 0);
      in_range = (r <= 127) & number;
      const int32_t c = r < 127 ? r : 127;
      code = scaled < 0.0f ? -c : c;
    } else {
      // truncf(shifted) in [0, max code] exactly when -1 < shifted < max + 1;
      // the clamp to [-2, 64] keeps the conversion defined (NaN to -2: code
      // 0, not in range).
      constexpr int32_t kMaxCode = Ty == GgufType::q4_0 ? 15 : 31;
      const float scaled = Ty == GgufType::q5_1 ? (x - low) * inv_d : x * inv_d;
      const float shifted = scaled +
          (Ty == GgufType::q5_1
               ? 0.5f
               : static_cast<float>(gguf_code_offset(Ty)) + 0.5f);
      float t = shifted > -2.0f ? shifted : -2.0f;
      t = t < 64.0f ? t : 64.0f;
      const int32_t c = static_cast<int32_t>(t);
      in_range = (c >= 0) & (c <= kMaxCode);
      code = c < 0 ? 0 : (c > kMaxCode ? kMaxCode : c);
    }
    const float value = Ty == GgufType::q5_1
        ? static_cast<float>(code) * dh + mh
        : static_cast<float>(code - gguf_code_offset(Ty)) * dh;
    out[j] = x != x ? x : value;
    if constexpr (kMask)
      mask[j] = in_range ? 1 : 0;
  }
}

// The blocks in chunks: every block's scale, then the chunk's halves in one
// vectorised loop, then the values block by block. The chunk is read before
// any of it is written, so y may be x.
template <GgufType Ty, typename T>
void gguf_blocks(
    const T* x,
    T* y,
    uint8_t* mask,
    int64_t block_begin,
    int64_t block_end) {
  constexpr int64_t kChunk = 32;
  float v[kChunk * kG], out[kG];
  float d[kChunk], low[kChunk], inv_d[kChunk], dh[kChunk], mh[kChunk];
  for (int64_t b0 = block_begin; b0 < block_end; b0 += kChunk) {
    const int64_t n = std::min(kChunk, block_end - b0);
    for (int64_t i = 0; i < n * kG; ++i)
      v[i] = to_float(x[b0 * kG + i]);
    for (int64_t k = 0; k < n; ++k)
      gguf_block_scale<Ty>(v + k * kG, d[k], low[k]);
    for (int64_t k = 0; k < n; ++k) {
      inv_d[k] = d[k] != 0.0f ? 1.0f / d[k] : 0.0f;
      dh[k] = half_round_trip(d[k]);
      mh[k] = Ty == GgufType::q5_1 ? half_round_trip(low[k]) : 0.0f;
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t at = (b0 + k) * kG;
      if (mask)
        gguf_block_values<Ty, true>(
            v + k * kG, out, mask + at, low[k], inv_d[k], dh[k], mh[k]);
      else
        gguf_block_values<Ty, false>(
            v + k * kG, out, nullptr, low[k], inv_d[k], dh[k], mh[k]);
      for (int j = 0; j < kG; ++j)
        y[at + j] = from_float<T>(out[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// K-quants under a fixed representation: kquant_codes and kquant_fake_quant
// ---------------------------------------------------------------------------------------------

// ggml's nearest_int, as gguf_kquant_ref.cpp's.
inline int32_t nearest_int(float v) {
  const float shifted = v + 12582912.0f;
  return static_cast<int32_t>(float_bits(shifted) & 0x7FFFFFu) - 0x400000;
}

// The per-sub-block scale and min of a stored representation (the bytes
// gguf_search_ref writes), as read_representation and kquant_unpack read them
// and wide_scale / wide_min / narrow_scale multiply them out.
template <KQuantType K>
struct SubBlocks {
  static constexpr bool kNarrow = K == KQuantType::q6_k;
  static constexpr int kSize = kNarrow ? 16 : 32;
  static constexpr int kCount = kKQuantBlockSize / kSize;
  static constexpr int32_t kMaxCode =
      K == KQuantType::q4_k ? 15 : (K == KQuantType::q5_k ? 31 : 63);
  static constexpr int kRepresentationBytes = kNarrow ? 18 : 16;
  float scale[kCount];
  float min[kCount];

  explicit SubBlocks(const uint8_t* r) {
    if constexpr (kNarrow) {
      // Q6_K: scales[16] (int8), then d.
      const float d =
          half_bits_to_float(static_cast<uint16_t>(r[16] | r[17] << 8));
      for (int s = 0; s < kCount; ++s) {
        scale[s] = d * static_cast<float>(static_cast<int8_t>(r[s]));
        min[s] = 0.0f;
      }
    } else {
      // Q4_K / Q5_K: d, dmin, then the 6-bit scales and mins in 12 bytes.
      const float d =
          half_bits_to_float(static_cast<uint16_t>(r[0] | r[1] << 8));
      const float dmin =
          half_bits_to_float(static_cast<uint16_t>(r[2] | r[3] << 8));
      const uint8_t* q = r + 4;
      uint8_t sc[8], m[8];
      for (int s = 0; s < 4; ++s) {
        sc[s] = q[s] & 63;
        m[s] = q[s + 4] & 63;
        sc[s + 4] = static_cast<uint8_t>((q[s + 8] & 0xF) | (q[s] >> 6) << 4);
        m[s + 4] = static_cast<uint8_t>((q[s + 8] >> 4) | (q[s + 4] >> 6) << 4);
      }
      for (int s = 0; s < kCount; ++s) {
        scale[s] = d * static_cast<float>(sc[s]);
        min[s] = dmin * static_cast<float>(m[s]);
      }
    }
  }
};

template <KQuantType K, bool kMask>
void kquant_sub_block(
    const float* __restrict v,
    float* __restrict out,
    uint8_t* __restrict mask,
    float scale,
    float min) {
  using P = SubBlocks<K>;
  if (scale == 0.0f) {
    // kquant_codes leaves the codes at 0 (fake_quant_gguf_fixed_ref starts
    // from zero codes): every value is code 0's, and the mask says which x
    // equal it.
    const float only = P::kNarrow ? scale * -32.0f : scale * 0.0f - min;
    for (int i = 0; i < P::kSize; ++i) {
      const float x = v[i];
      out[i] = x != x ? x : only;
      if constexpr (kMask)
        mask[i] = x == only ? 1 : 0;
    }
    return;
  }
  for (int i = 0; i < P::kSize; ++i) {
    const float x = v[i];
    const float scaled = P::kNarrow ? x / scale : (x + min) / scale;
    const int32_t l = nearest_int(scaled) + (P::kNarrow ? 32 : 0);
    const int32_t code = l < 0 ? 0 : (l > P::kMaxCode ? P::kMaxCode : l);
    const float value = P::kNarrow ? scale * static_cast<float>(code - 32)
                                   : scale * static_cast<float>(code) - min;
    out[i] = x != x ? x : value;
    if constexpr (kMask)
      mask[i] = (l >= 0) & (l <= P::kMaxCode) & (x == x) ? 1 : 0;
  }
}

template <KQuantType K, typename T>
void kquant_fixed_blocks(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    int64_t block_begin,
    int64_t block_end) {
  using P = SubBlocks<K>;
  float v[P::kSize], out[P::kSize];
  for (int64_t b = block_begin; b < block_end; ++b) {
    const P params(representations + b * P::kRepresentationBytes);
    for (int s = 0; s < P::kCount; ++s) {
      const int64_t at = b * kKQuantBlockSize + s * P::kSize;
      for (int i = 0; i < P::kSize; ++i)
        v[i] = to_float(x[at + i]);
      if (mask)
        kquant_sub_block<K, true>(
            v, out, mask + at, params.scale[s], params.min[s]);
      else
        kquant_sub_block<K, false>(
            v, out, nullptr, params.scale[s], params.min[s]);
      for (int i = 0; i < P::kSize; ++i)
        y[at + i] = from_float<T>(out[i]);
    }
  }
}

} // namespace

float microscale_amax_isa(const float* x, int64_t n) {
  const float* __restrict in = x;
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = float_bits(in[i]) & kAbsMask;
    m = a > m ? a : m;
  }
  if (m > kInfBits) {
    // max_magnitude keeps the last NaN.
    for (int64_t i = n - 1; i >= 0; --i) {
      if (in[i] != in[i])
        return bits_float(float_bits(in[i]) & kAbsMask);
    }
  }
  return bits_float(m);
}

void fake_quant_microscale_isa(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* scale_codes_out) {
  const int64_t blocks = rows * (cols / microscale_block_size(format));
  switch (format) {
    case MicroscaleFormat::nvfp4:
      microscale_blocks<MicroscaleFormat::nvfp4>(
          x, y, mask, blocks, scale_codes, global_scale, scale_codes_out);
      return;
    case MicroscaleFormat::mxfp4:
      microscale_blocks<MicroscaleFormat::mxfp4>(
          x, y, mask, blocks, scale_codes, global_scale, scale_codes_out);
      return;
    case MicroscaleFormat::mxfp8:
      microscale_blocks<MicroscaleFormat::mxfp8>(
          x, y, mask, blocks, scale_codes, global_scale, scale_codes_out);
      return;
  }
}

template <typename T>
void fake_quant_gguf_isa(
    const T* x,
    T* y,
    uint8_t* mask,
    int type,
    int64_t block_begin,
    int64_t block_end) {
  switch (static_cast<GgufType>(type)) {
    case GgufType::q8_0:
      gguf_blocks<GgufType::q8_0>(x, y, mask, block_begin, block_end);
      return;
    case GgufType::q4_0:
      gguf_blocks<GgufType::q4_0>(x, y, mask, block_begin, block_end);
      return;
    case GgufType::q5_0:
      gguf_blocks<GgufType::q5_0>(x, y, mask, block_begin, block_end);
      return;
    case GgufType::q5_1:
      gguf_blocks<GgufType::q5_1>(x, y, mask, block_begin, block_end);
      return;
    default: // the K-quants: fake_quant_gguf_fast runs the reference
      return;
  }
}

template <typename T>
void fake_quant_gguf_fixed_isa(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    int type,
    int64_t block_begin,
    int64_t block_end) {
  switch (static_cast<GgufType>(type)) {
    case GgufType::q4_k:
      kquant_fixed_blocks<KQuantType::q4_k>(
          x, y, mask, representations, block_begin, block_end);
      return;
    case GgufType::q5_k:
      kquant_fixed_blocks<KQuantType::q5_k>(
          x, y, mask, representations, block_begin, block_end);
      return;
    default:
      kquant_fixed_blocks<KQuantType::q6_k>(
          x, y, mask, representations, block_begin, block_end);
      return;
  }
}

template void fake_quant_gguf_isa<float>(
    const float*,
    float*,
    uint8_t*,
    int,
    int64_t,
    int64_t);
template void fake_quant_gguf_isa<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    int,
    int64_t,
    int64_t);
template void fake_quant_gguf_fixed_isa<float>(
    const float*,
    float*,
    uint8_t*,
    const uint8_t*,
    int,
    int64_t,
    int64_t);
template void fake_quant_gguf_fixed_isa<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    const uint8_t*,
    int,
    int64_t,
    int64_t);

} // namespace QAT_KERNELS_ABI
} // namespace qat::kernels
