#include "kernels/ref/gguf_kquant_ref.h"

#include <cmath>

namespace qat::kernels {
namespace {

constexpr int kWideSubBlock = 32;   // Q4_K, Q5_K
constexpr int kNarrowSubBlock = 16; // Q6_K
constexpr int kQ6CodeOffset = 32;
// ggml's GROUP_MAX_EPS: below it a group counts as all zero.
constexpr float kGroupMaxEps = 1e-15f;

// ggml's nearest_int. Adding 1.5 * 2^23 leaves the float unit to round v to
// an integer, half to even, which the low 23 bits of the sum then hold,
// offset by 2^22. Right for |v| < 2^22 (ggml asserts it in debug builds
// only); beyond, this returns the same wrapped bits as ggml's release builds,
// so that even there the bytes match. NaN gives 0.
int nearest_int(float v) {
  const float shifted = v + 12582912.0f;
  return static_cast<int>(float_bits(shifted) & 0x7FFFFFu) - 0x400000;
}

int clamp_int(int v, int lo, int hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

float half_value(uint16_t bits) {
  return half_bits_to_float(bits);
}

// Sub-block s's scale and min of a Q4_K / Q5_K representation, as ggml's final
// pass and dequantize_row_q4_K / q5_K compute them: half(d) * sc and
// half(dmin) * m, each one rounded product.
float wide_scale(const KQuantRepresentation& rep, int s) {
  return half_value(rep.d_bits) *
      static_cast<float>(static_cast<uint8_t>(rep.scales[s]));
}
float wide_min(const KQuantRepresentation& rep, int s) {
  return half_value(rep.dmin_bits) * static_cast<float>(rep.mins[s]);
}
// Q6_K's: half(d) * sc.
float narrow_scale(const KQuantRepresentation& rep, int s) {
  return half_value(rep.d_bits) * static_cast<float>(rep.scales[s]);
}

struct ScaleAndMin {
  float scale;
  float min; // subtracted: x' = scale * code - min, min >= 0
};

// ggml's make_qkx2_quants(32, max_code, x, weight, codes, &min, Laux, rmin,
// rdelta, steps, use_mad = false): the affine fit x ~ scale * code + offset
// (offset <= 0) of one sub-block that minimises the weighted squared error.
// It starts from the min-max fit, then tries steps + 1 other code ranges
// (max_code + rmin + rdelta * step codes over hi - lo, lo the best offset so
// far), each followed by the weighted least-squares scale and offset for those
// codes, and keeps the best.
// Every sum runs in index order, one rounded operation at a time, as ggml's.
ScaleAndMin fit_scale_and_min(
    const float* x,
    const float* weight,
    int max_code,
    float rmin,
    float rdelta,
    int steps,
    uint8_t* codes) {
  constexpr int n = kWideSubBlock;
  float lo = x[0];
  float hi = x[0];
  float sum_w = weight[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < lo)
      lo = x[i];
    if (x[i] > hi)
      hi = x[i];
    sum_w += weight[i];
    sum_x += weight[i] * x[i];
  }
  // The offset is never positive, so that the mins stored are unsigned.
  if (lo > 0.0f)
    lo = 0.0f;
  if (hi == lo) {
    for (int i = 0; i < n; ++i)
      codes[i] = 0;
    return {0.0f, -lo};
  }
  const float top = static_cast<float>(max_code);
  float inv_scale = top / (hi - lo);
  float scale = 1.0f / inv_scale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clamp_int(nearest_int(inv_scale * (x[i] - lo)), 0, max_code);
    codes[i] = static_cast<uint8_t>(l);
    const float diff = scale * static_cast<float>(l) + lo - x[i];
    best_error += weight[i] * (diff * diff);
  }
  uint8_t trial[n];
  for (int step = 0; step <= steps; ++step) {
    // As in ggml, a trial that wins moves the offset `lo` that the later
    // trials start from: both their range hi - lo and the values x - lo.
    inv_scale = (rmin + rdelta * static_cast<float>(step) + top) / (hi - lo);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l =
          clamp_int(nearest_int(inv_scale * (x[i] - lo)), 0, max_code);
      trial[i] = static_cast<uint8_t>(l);
      const float w = weight[i];
      const float fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    // Weighted least squares for scale and offset given these codes (the
    // 2x2 normal equations by Cramer's rule).
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f))
      continue;
    float trial_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float trial_offset = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (trial_offset > 0.0f) { // refit with the offset held at zero
      trial_offset = 0.0f;
      trial_scale = sum_xl / sum_l2;
    }
    float error = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float diff =
          trial_scale * static_cast<float>(trial[i]) + trial_offset - x[i];
      error += weight[i] * (diff * diff);
    }
    if (error < best_error) {
      for (int i = 0; i < n; ++i)
        codes[i] = trial[i];
      best_error = error;
      scale = trial_scale;
      lo = trial_offset;
    }
  }
  return {scale, -lo};
}

// The Q4_K / Q5_K half of ggml's quantize_row_q4_K_ref / quantize_row_q5_K_ref
// before its final pass. Without an importance matrix ggml weighs value i of a
// sub-block by rms + |x_i| (rms = sqrt(mean(x^2)) of the sub-block), fits each
// sub-block (Q4_K: rmin -1, 20 steps; Q5_K: rmin -0.5, 15 steps; rdelta 0.1),
// then stores the scales as 6-bit multiples of d = max scale / 63 and the mins
// as multiples of dmin = max min / 63.
void search_wide(
    KQuantType type,
    const float* x,
    KQuantRepresentation& rep,
    uint8_t* codes) {
  const bool q4 = type == KQuantType::q4_k;
  const int max_code = q4 ? 15 : 31;
  const float rmin = q4 ? -1.0f : -0.5f;
  const int steps = q4 ? 20 : 15;
  constexpr int kSubBlocks = kKQuantBlockSize / kWideSubBlock;
  float scale[kSubBlocks], min[kSubBlocks];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int s = 0; s < kSubBlocks; ++s) {
    const float* xs = x + s * kWideSubBlock;
    float sum_x2 = 0.0f;
    for (int i = 0; i < kWideSubBlock; ++i)
      sum_x2 += xs[i] * xs[i];
    const float rms = std::sqrt(sum_x2 / static_cast<float>(kWideSubBlock));
    float weight[kWideSubBlock];
    for (int i = 0; i < kWideSubBlock; ++i)
      weight[i] = rms + std::fabs(xs[i]);
    const ScaleAndMin fit = fit_scale_and_min(
        xs, weight, max_code, rmin, 0.1f, steps, codes + s * kWideSubBlock);
    scale[s] = fit.scale;
    min[s] = fit.min;
    if (scale[s] > max_scale)
      max_scale = scale[s];
    if (min[s] > max_min)
      max_min = min[s];
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  rep = KQuantRepresentation{};
  for (int s = 0; s < kSubBlocks; ++s) {
    // ggml stores nearest_int into a uint8_t before taking the min with 63,
    // so a negative result wraps to a large one and becomes 63.
    const auto ls = static_cast<uint8_t>(nearest_int(inv_scale * scale[s]));
    const auto lm = static_cast<uint8_t>(nearest_int(inv_min * min[s]));
    rep.scales[s] = static_cast<int8_t>(ls < 63 ? ls : 63);
    rep.mins[s] = lm < 63 ? lm : 63;
  }
  rep.d_bits = half_bits_from_float(max_scale / 63.0f);
  rep.dmin_bits = half_bits_from_float(max_min / 63.0f);
}

// ggml's make_qx_quants(16, 32, x, codes, rmse_type = 1, NULL): the symmetric
// fit x ~ scale * (code - 32) of one Q6_K sub-block, weighted by x^2. It
// starts from the scale that maps the value of largest magnitude to -32, then
// tries 18 nearby code ranges (32 + 0.1 * step, step = -9..9, not 0), keeps
// the codes whose least-squares scale explains the most weighted energy, and
// returns that scale (its sign is the opposite of the largest value's).
float fit_symmetric_scale(const float* x, uint8_t* codes) {
  constexpr int n = kNarrowSubBlock;
  constexpr int nmax = kQ6CodeOffset;
  float largest = 0.0f, amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      largest = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i)
      codes[i] = 0;
    return 0.0f;
  }
  float inv_scale = static_cast<float>(-nmax) / largest;
  float sum_lx = 0.0f, sum_l2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clamp_int(nearest_int(inv_scale * x[i]), -nmax, nmax - 1);
    codes[i] = static_cast<uint8_t>(l + nmax);
    const float w = x[i] * x[i];
    const float fl = static_cast<float>(l);
    sum_lx += w * x[i] * fl;
    sum_l2 += w * fl * fl;
  }
  float scale = sum_l2 != 0.0f ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0)
      continue;
    inv_scale =
        -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / largest;
    sum_lx = 0.0f;
    sum_l2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_int(nearest_int(inv_scale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      const float fl = static_cast<float>(l);
      sum_lx += w * x[i] * fl;
      sum_l2 += w * fl * fl;
    }
    // sum_lx^2 / sum_l2 is the energy the fit explains; compared without
    // dividing, as ggml does.
    if (sum_l2 > 0.0f && sum_lx * sum_lx > best * sum_l2) {
      for (int i = 0; i < n; ++i)
        codes[i] = static_cast<uint8_t>(
            nmax + clamp_int(nearest_int(inv_scale * x[i]), -nmax, nmax - 1));
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// The Q6_K half of ggml's quantize_row_q6_K_ref before its final pass: each
// sub-block's scale, then those scales as int8 multiples of d, where d is the
// largest-magnitude scale / -128 (so that scale maps to -128, clamped to 127
// where the rounding gives +128). A super-block whose scales are all below
// kGroupMaxEps is stored as zero bytes.
void search_narrow(const float* x, KQuantRepresentation& rep, uint8_t* codes) {
  constexpr int kSubBlocks = kKQuantBlockSize / kNarrowSubBlock;
  float scale[kSubBlocks];
  float max_scale = 0.0f, max_abs_scale = 0.0f;
  for (int s = 0; s < kSubBlocks; ++s) {
    scale[s] = fit_symmetric_scale(
        x + s * kNarrowSubBlock, codes + s * kNarrowSubBlock);
    const float abs_scale = std::fabs(scale[s]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scale[s];
    }
  }
  rep = KQuantRepresentation{};
  if (max_abs_scale < kGroupMaxEps) {
    for (int i = 0; i < kKQuantBlockSize; ++i)
      codes[i] = 0;
    return;
  }
  const float inv_scale = -128.0f / max_scale;
  rep.d_bits = half_bits_from_float(1.0f / inv_scale);
  for (int s = 0; s < kSubBlocks; ++s) {
    const int q = nearest_int(inv_scale * scale[s]);
    rep.scales[s] = static_cast<int8_t>(q > 127 ? 127 : q);
  }
}

void store_half(uint8_t* out, uint16_t bits) {
  out[0] = static_cast<uint8_t>(bits & 0xFFu);
  out[1] = static_cast<uint8_t>(bits >> 8);
}
uint16_t load_half(const uint8_t* in) {
  return static_cast<uint16_t>(in[0] | in[1] << 8);
}

// Q4_K / Q5_K: eight 6-bit scales and eight 6-bit mins in 12 bytes, as
// ggml's quantize_row_q4_K_ref writes them and get_scale_min_k4 reads them:
// bytes 0..3 hold scales 0..3, bytes 4..7 mins 0..3, each with the top two
// bits of scale / min s + 4 in bits 6..7; bytes 8..11 hold the low nibbles of
// scale s + 4 (bits 0..3) and min s + 4 (bits 4..7).
void pack_scales_and_mins(const KQuantRepresentation& rep, uint8_t* out) {
  for (int s = 0; s < 4; ++s) {
    const auto sc_lo = static_cast<unsigned>(rep.scales[s]) & 63u;
    const auto sc_hi = static_cast<unsigned>(rep.scales[s + 4]) & 63u;
    const unsigned m_lo = rep.mins[s] & 63u;
    const unsigned m_hi = rep.mins[s + 4] & 63u;
    out[s] = static_cast<uint8_t>(sc_lo | (sc_hi >> 4) << 6);
    out[s + 4] = static_cast<uint8_t>(m_lo | (m_hi >> 4) << 6);
    out[s + 8] = static_cast<uint8_t>((sc_hi & 0xFu) | (m_hi & 0xFu) << 4);
  }
}
void unpack_scales_and_mins(const uint8_t* in, KQuantRepresentation& rep) {
  for (int s = 0; s < 4; ++s) {
    rep.scales[s] = static_cast<int8_t>(in[s] & 63);
    rep.mins[s] = static_cast<uint8_t>(in[s + 4] & 63);
    rep.scales[s + 4] =
        static_cast<int8_t>((in[s + 8] & 0xF) | (in[s] >> 6) << 4);
    rep.mins[s + 4] =
        static_cast<uint8_t>((in[s + 8] >> 4) | (in[s + 4] >> 6) << 4);
  }
}

// Byte offsets inside the stored super-blocks (ggml-common.h).
//   block_q4_K: d, dmin, scales[12], qs[128]
//   block_q5_K: d, dmin, scales[12], qh[32], qs[128]
//   block_q6_K: ql[128], qh[64], scales[16], d
constexpr int kWideScalesAt = 4;
constexpr int kQ4QsAt = 16;
constexpr int kQ5QhAt = 16;
constexpr int kQ5QsAt = 48;
constexpr int kQ6QhAt = 128;
constexpr int kQ6ScalesAt = 192;
constexpr int kQ6DAt = 208;

} // namespace

int64_t kquant_block_bytes(KQuantType type) {
  switch (type) {
    case KQuantType::q4_k:
      return 144;
    case KQuantType::q5_k:
      return 176;
    case KQuantType::q6_k:
      break;
  }
  return 210;
}

int kquant_sub_block_size(KQuantType type) {
  return type == KQuantType::q6_k ? kNarrowSubBlock : kWideSubBlock;
}

int kquant_sub_blocks(KQuantType type) {
  return kKQuantBlockSize / kquant_sub_block_size(type);
}

int kquant_max_code(KQuantType type) {
  switch (type) {
    case KQuantType::q4_k:
      return 15;
    case KQuantType::q5_k:
      return 31;
    case KQuantType::q6_k:
      break;
  }
  return 63;
}

void kquant_search(
    KQuantType type,
    const float* x,
    KQuantRepresentation& rep,
    uint8_t* codes) {
  uint8_t scratch[kKQuantBlockSize];
  uint8_t* out = codes ? codes : scratch;
  if (type == KQuantType::q6_k)
    search_narrow(x, rep, out);
  else
    search_wide(type, x, rep, out);
}

// The final pass of ggml's quantize_row_q*_K_ref, which rounds against the
// stored (rounded) scales, not the ones the search found.
void kquant_codes(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    uint8_t* codes,
    uint8_t* mask) {
  const int size = kquant_sub_block_size(type);
  const int max_code = kquant_max_code(type);
  const bool narrow = type == KQuantType::q6_k;
  for (int s = 0; s < kquant_sub_blocks(type); ++s) {
    const int at = s * size;
    const float scale = narrow ? narrow_scale(rep, s) : wide_scale(rep, s);
    if (scale == 0.0f) { // ggml: `if (!d) continue;`
      if (mask) {
        const float only = kquant_dequantize(type, rep, at, codes[at]);
        for (int i = at; i < at + size; ++i)
          mask[i] = x[i] == only;
      }
      continue;
    }
    const float min = narrow ? 0.0f : wide_min(rep, s);
    const int offset = narrow ? kQ6CodeOffset : 0;
    for (int i = at; i < at + size; ++i) {
      // Q4_K / Q5_K: (x + min) / scale; Q6_K: x / scale, one division each.
      const float scaled = narrow ? x[i] / scale : (x[i] + min) / scale;
      const int l = nearest_int(scaled) + offset;
      codes[i] = static_cast<uint8_t>(clamp_int(l, 0, max_code));
      if (mask)
        mask[i] = l >= 0 && l <= max_code && x[i] == x[i];
    }
  }
}

// dequantize_row_q4_K / q5_K: (half(d) * sc) * code - half(dmin) * m;
// dequantize_row_q6_K: (half(d) * sc) * (code - 32). Products and the
// difference each rounded, in this order.
float kquant_dequantize(
    KQuantType type,
    const KQuantRepresentation& rep,
    int index,
    int code) {
  const int s = index / kquant_sub_block_size(type);
  if (type == KQuantType::q6_k)
    return narrow_scale(rep, s) * static_cast<float>(code - kQ6CodeOffset);
  return wide_scale(rep, s) * static_cast<float>(code) - wide_min(rep, s);
}

void kquant_fake_quant(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    uint8_t* codes,
    float* y,
    uint8_t* mask) {
  kquant_codes(type, rep, x, codes, mask);
  const int size = kquant_sub_block_size(type);
  const bool narrow = type == KQuantType::q6_k;
  for (int s = 0; s < kquant_sub_blocks(type); ++s) {
    // kquant_dequantize's operations, its scale and min read once a
    // sub-block.
    const float scale = narrow ? narrow_scale(rep, s) : wide_scale(rep, s);
    const float min = narrow ? 0.0f : wide_min(rep, s);
    for (int i = s * size; i < (s + 1) * size; ++i) {
      const float value = narrow
          ? scale * static_cast<float>(codes[i] - kQ6CodeOffset)
          : scale * static_cast<float>(codes[i]) - min;
      y[i] = x[i] != x[i] ? x[i] : value;
    }
  }
}

void kquant_representation_grad(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    const float* grad_y,
    double& grad_d,
    double& grad_dmin) {
  uint8_t codes[kKQuantBlockSize] = {};
  uint8_t mask[kKQuantBlockSize];
  kquant_codes(type, rep, x, codes, mask);
  const int size = kquant_sub_block_size(type);
  const bool narrow = type == KQuantType::q6_k;
  const int offset = narrow ? kQ6CodeOffset : 0;
  grad_d = grad_dmin = 0.0;
  for (int s = 0; s < kquant_sub_blocks(type); ++s) {
    const double sc = narrow
        ? static_cast<double>(rep.scales[s])
        : static_cast<double>(static_cast<uint8_t>(rep.scales[s]));
    const double m = narrow ? 0.0 : static_cast<double>(rep.mins[s]);
    const double scale = narrow ? narrow_scale(rep, s) : wide_scale(rep, s);
    const double min = narrow ? 0.0 : wide_min(rep, s);
    for (int i = s * size; i < (s + 1) * size; ++i) {
      if (x[i] != x[i])
        continue;
      const double q = static_cast<double>(codes[i] - offset);
      const double g = grad_y[i];
      if (scale != 0.0 && mask[i]) {
        const double u = (static_cast<double>(x[i]) + min) / scale;
        grad_d += g * sc * (q - u);
      } else {
        grad_d += g * sc * q;
        grad_dmin -= g * m;
      }
    }
  }
}

void kquant_pack(
    KQuantType type,
    const KQuantRepresentation& rep,
    const uint8_t* codes,
    uint8_t* out) {
  const uint8_t* c = codes;
  switch (type) {
    case KQuantType::q4_k:
      // Each 64 values: byte l holds value l (low nibble) and l + 32 (high).
      store_half(out, rep.d_bits);
      store_half(out + 2, rep.dmin_bits);
      pack_scales_and_mins(rep, out + kWideScalesAt);
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l)
          out[kQ4QsAt + 32 * g + l] = static_cast<uint8_t>(
              (c[64 * g + l] & 0xF) | (c[64 * g + l + 32] & 0xF) << 4);
      return;
    case KQuantType::q5_k:
      // The low nibbles as Q4_K's; the fifth bit of value 64 g + l in bit 2 g
      // of qh[l], of value 64 g + 32 + l in bit 2 g + 1.
      store_half(out, rep.d_bits);
      store_half(out + 2, rep.dmin_bits);
      pack_scales_and_mins(rep, out + kWideScalesAt);
      for (int l = 0; l < 32; ++l) {
        unsigned high = 0;
        for (int g = 0; g < 4; ++g) {
          high |= ((c[64 * g + l] >> 4) & 1u) << (2 * g);
          high |= ((c[64 * g + l + 32] >> 4) & 1u) << (2 * g + 1);
        }
        out[kQ5QhAt + l] = static_cast<uint8_t>(high);
      }
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l)
          out[kQ5QsAt + 32 * g + l] = static_cast<uint8_t>(
              (c[64 * g + l] & 0xF) | (c[64 * g + l + 32] & 0xF) << 4);
      return;
    case KQuantType::q6_k:
      // Each 128 values (half h): ql[64 h + l] holds the low nibbles of
      // values l and l + 64, ql[64 h + 32 + l] of l + 32 and l + 96; the top
      // two bits of values l, l + 32, l + 64, l + 96 fill qh[32 h + l].
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ch = c + 128 * h;
        for (int l = 0; l < 32; ++l) {
          out[64 * h + l] =
              static_cast<uint8_t>((ch[l] & 0xF) | (ch[l + 64] & 0xF) << 4);
          out[64 * h + l + 32] = static_cast<uint8_t>(
              (ch[l + 32] & 0xF) | (ch[l + 96] & 0xF) << 4);
          out[kQ6QhAt + 32 * h + l] = static_cast<uint8_t>(
              ((ch[l] >> 4) & 3u) | ((ch[l + 32] >> 4) & 3u) << 2 |
              ((ch[l + 64] >> 4) & 3u) << 4 | ((ch[l + 96] >> 4) & 3u) << 6);
        }
      }
      for (int s = 0; s < 16; ++s)
        out[kQ6ScalesAt + s] = static_cast<uint8_t>(rep.scales[s]);
      store_half(out + kQ6DAt, rep.d_bits);
      return;
  }
}

void kquant_unpack(
    KQuantType type,
    const uint8_t* block,
    KQuantRepresentation& rep,
    uint8_t* codes) {
  rep = KQuantRepresentation{};
  switch (type) {
    case KQuantType::q4_k:
      rep.d_bits = load_half(block);
      rep.dmin_bits = load_half(block + 2);
      unpack_scales_and_mins(block + kWideScalesAt, rep);
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l) {
          const uint8_t q = block[kQ4QsAt + 32 * g + l];
          codes[64 * g + l] = q & 0xF;
          codes[64 * g + l + 32] = q >> 4;
        }
      return;
    case KQuantType::q5_k:
      rep.d_bits = load_half(block);
      rep.dmin_bits = load_half(block + 2);
      unpack_scales_and_mins(block + kWideScalesAt, rep);
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l) {
          const uint8_t q = block[kQ5QsAt + 32 * g + l];
          const uint8_t high = block[kQ5QhAt + l];
          codes[64 * g + l] =
              static_cast<uint8_t>((q & 0xF) | ((high >> (2 * g)) & 1) << 4);
          codes[64 * g + l + 32] =
              static_cast<uint8_t>((q >> 4) | ((high >> (2 * g + 1)) & 1) << 4);
        }
      return;
    case KQuantType::q6_k:
      for (int h = 0; h < 2; ++h) {
        uint8_t* ch = codes + 128 * h;
        for (int l = 0; l < 32; ++l) {
          const uint8_t q_a = block[64 * h + l];
          const uint8_t q_b = block[64 * h + l + 32];
          const uint8_t high = block[kQ6QhAt + 32 * h + l];
          ch[l] = static_cast<uint8_t>((q_a & 0xF) | (high & 3) << 4);
          ch[l + 32] =
              static_cast<uint8_t>((q_b & 0xF) | ((high >> 2) & 3) << 4);
          ch[l + 64] =
              static_cast<uint8_t>((q_a >> 4) | ((high >> 4) & 3) << 4);
          ch[l + 96] =
              static_cast<uint8_t>((q_b >> 4) | ((high >> 6) & 3) << 4);
        }
      }
      for (int s = 0; s < 16; ++s)
        rep.scales[s] = static_cast<int8_t>(block[kQ6ScalesAt + s]);
      rep.d_bits = load_half(block + kQ6DAt);
      return;
  }
}

void quantize_kquant_ref(
    const float* x,
    int64_t n,
    KQuantType type,
    uint8_t* out) {
  const int64_t bytes = kquant_block_bytes(type);
  KQuantRepresentation rep;
  uint8_t codes[kKQuantBlockSize];
  for (int64_t b = 0; b < n / kKQuantBlockSize; ++b) {
    const float* xb = x + b * kKQuantBlockSize;
    kquant_search(type, xb, rep, codes);
    kquant_codes(type, rep, xb, codes, nullptr);
    kquant_pack(type, rep, codes, out + b * bytes);
  }
}

void dequantize_kquant_ref(
    const uint8_t* blocks,
    int64_t n,
    KQuantType type,
    float* out) {
  const int64_t bytes = kquant_block_bytes(type);
  KQuantRepresentation rep;
  uint8_t codes[kKQuantBlockSize];
  for (int64_t b = 0; b < n / kKQuantBlockSize; ++b) {
    kquant_unpack(type, blocks + b * bytes, rep, codes);
    float* o = out + b * kKQuantBlockSize;
    for (int i = 0; i < kKQuantBlockSize; ++i)
      o[i] = kquant_dequantize(type, rep, i, codes[i]);
  }
}

template <typename T>
void fake_quant_kquant_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    KQuantType type,
    int64_t block_begin,
    int64_t block_end) {
  float values[kKQuantBlockSize];
  uint8_t codes[kKQuantBlockSize];
  KQuantRepresentation rep;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t at = b * kKQuantBlockSize;
    for (int i = 0; i < kKQuantBlockSize; ++i)
      values[i] = to_float(x[at + i]);
    kquant_search(type, values, rep, codes);
    kquant_fake_quant(
        type, rep, values, codes, values, mask ? mask + at : nullptr);
    for (int i = 0; i < kKQuantBlockSize; ++i)
      y[at + i] = from_float<T>(values[i]);
  }
}

template void fake_quant_kquant_ref<float>(
    const float*,
    float*,
    uint8_t*,
    KQuantType,
    int64_t,
    int64_t);
template void fake_quant_kquant_ref<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    KQuantType,
    int64_t,
    int64_t);

} // namespace qat::kernels
