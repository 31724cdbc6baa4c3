// ggml's K-quants Q4_K, Q5_K and Q6_K on raw pointers, bit for bit as
// llama.cpp's reference C code (ggml-quants.c) computes them, so that a model
// trained against them exports to GGUF with no further loss.
//
// Each super-block holds QK_K = 256 consecutive values and is described by the
// format's own parameters (KQuantRepresentation) plus one integer code per
// value:
//
//   Q4_K, Q5_K  8 sub-blocks of 32; sub-block s has a 6-bit scale sc[s] and a
//               6-bit min m[s], and the super-block two halves d and dmin:
//                 x' = (half(d) * sc[s]) * code - (half(dmin) * m[s])
//               codes 0..15 (Q4_K) or 0..31 (Q5_K).
//   Q6_K        16 sub-blocks of 16; sub-block s has an int8 scale sc[s] and
//               the super-block one half d:
//                 x' = (half(d) * sc[s]) * (code - 32),  codes 0..63.
//
// Quantizing is three steps, which a trainer may take apart (keep the
// representation fixed, or learn it, and re-round the codes each step):
//   kquant_search   the representation, found as ggml's quantize_row_q*_K_ref
//                   finds it (make_qkx2_quants / make_qx_quants per sub-block,
//                   then the scales themselves quantized to 6 or 8 bits);
//   kquant_codes    each value's code under a given representation, as ggml's
//                   final pass rounds it;
//   kquant_pack     the exact bytes of ggml's block_q4_K / block_q5_K /
//                   block_q6_K.
// kquant_dequantize is ggml's dequantize_row_q*_K for one value, with its float
// operations in the same order.
//
// All float arithmetic is in the .cpp, which must be built with
// -ffp-contract=off (qat_kernel_flags). llama.cpp builds ggml-quants.c (in
// libggml-base) for baseline x86-64, so without FMA; built with FMA
// contraction (GCC -march=native) ggml's own bytes change in 0.6% (Q6_K) to
// 28% (Q5_K) of super-blocks, all in the search: nearest_int(a * b) with the
// product fused into its + 1.5 * 2^23 (each sub-block's largest value sits on
// a .5 tie at some trial steps), make_qkx2_quants' error and normal-equation
// sums, make_qx_quants' sums. The final rounding pass (a division) and
// dequantization (exact products) are FMA-proof. Checked against ggml's C
// code, built both ways, by tests/kquant_oracle.sh.
#pragma once

#include <cstdint>

#include "kernels/quant_math.h"

namespace qat::kernels {

enum class KQuantType : int { q4_k = 0, q5_k = 1, q6_k = 2 };

constexpr int kKQuantBlockSize = 256; // ggml's QK_K
constexpr int kKQuantMaxSubBlocks = 16;

// Bytes of one stored super-block: 144 (Q4_K), 176 (Q5_K), 210 (Q6_K).
int64_t kquant_block_bytes(KQuantType type);
// Values per sub-block (32, 32, 16) and sub-blocks per super-block (8, 8, 16).
int kquant_sub_block_size(KQuantType type);
int kquant_sub_blocks(KQuantType type);
// Largest code (15, 31, 63); Q6_K's code c stands for the integer c - 32.
int kquant_max_code(KQuantType type);

// One super-block's own parameters.
struct KQuantRepresentation {
  uint16_t d_bits = 0;    // half: the super-block scale
  uint16_t dmin_bits = 0; // half: the scale of the mins (Q4_K, Q5_K; 0 in Q6_K)
  // Q4_K, Q5_K: scales[0..7] are 6-bit sub-block scales (0..63), the rest 0.
  // Q6_K: the 16 signed 8-bit sub-block scales.
  int8_t scales[kKQuantMaxSubBlocks] = {};
  uint8_t mins[8] = {}; // Q4_K, Q5_K: 6-bit sub-block mins (0..63)
};

// The representation of the 256 values x, as ggml's quantize_row_q*_K_ref
// chooses it. codes (may be null) receive the codes ggml's search leaves for
// each value; they matter only in a sub-block whose scale half(d) * sc is zero,
// where ggml stores them as they are (see kquant_codes).
void kquant_search(
    KQuantType type,
    const float* x,
    KQuantRepresentation& rep,
    uint8_t* codes);

// The code of each of the 256 values x under rep, as the last pass of ggml's
// quantize_row_q*_K_ref rounds it: nearest_int((x + dmin_s) / d_s) (Q4_K,
// Q5_K) or nearest_int(x / d_s) + 32 (Q6_K), clamped to 0..max code. In a
// sub-block whose scale d_s is zero the codes are left as they are (ggml keeps
// its search's codes there; every code has the same value, up to the sign of
// a zero). mask (may be null): mask[i] = 1 where the rounded code was inside
// the range, 0 where it was clamped (or x is NaN); in a zero-scale sub-block,
// 1 where x equals the sub-block's one value.
void kquant_codes(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    uint8_t* codes,
    uint8_t* mask);

// The value of `code` at position `index` (0..255, which picks the sub-block)
// under rep, as ggml's dequantize_row_q*_K computes it.
float kquant_dequantize(
    KQuantType type,
    const KQuantRepresentation& rep,
    int index,
    int code);

// kquant_codes, then each value as kquant_dequantize gives it (the scale and
// min of a sub-block read once), NaN where x is NaN: the fake-quantized
// values. y may be x.
void kquant_fake_quant(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    uint8_t* codes,
    float* y,
    uint8_t* mask);

// Learned representations (LSQ-style): a trainer learns each super-block's
// halves d and dmin as floats (rounded to half in the forward, straight
// through), while the sub-block scales and mins stay the integers ggml's
// search chose. The gradient of sum(grad_y * x') over the 256 values x with
// respect to d and dmin, under rep (whose halves are the rounded ones), in
// double. Derivation:
//
//   Q4_K, Q5_K: x' = d sc q - dmin m with q = clamp(round(u), 0, qmax),
//               u = (x + dmin m) / (d sc), the sub-block's sc and m.
//     In range (q = round(u), the straight-through estimator takes
//     d round(u) / du = 1):
//       dx'/dd    = sc q + d sc du/dd    = sc q - sc u = sc (q - u)
//       dx'/ddmin = d sc du/ddmin - m    = m - m       = 0
//     Clipped (q = 0 or qmax, constant):
//       dx'/dd    = sc q,   dx'/ddmin = -m
//   Q6_K:       x' = d sc (q - 32), u = x / (d sc) + 32:
//     in range dx'/dd = sc ((q - 32) - x / (d sc)); clipped sc (q - 32).
//   A sub-block whose scale d sc is 0 holds one value, -dmin m (its codes
//   are 0): dx'/dd = 0, dx'/ddmin = -m.
// As in LSQ (Esser et al. 2020, eq. 3) the in-range term is the rounding
// error, so d moves to where the codes round best; the caller scales both
// by LSQ's 1 / sqrt(values per scale * qmax). A NaN x contributes nothing.
void kquant_representation_grad(
    KQuantType type,
    const KQuantRepresentation& rep,
    const float* x,
    const float* grad_y,
    double& grad_d,
    double& grad_dmin);

// rep and 256 codes to ggml's stored bytes (kquant_block_bytes of them), and
// back. Every byte pattern unpacks, and packs back to itself.
void kquant_pack(
    KQuantType type,
    const KQuantRepresentation& rep,
    const uint8_t* codes,
    uint8_t* out);
void kquant_unpack(
    KQuantType type,
    const uint8_t* block,
    KQuantRepresentation& rep,
    uint8_t* codes);

// n values (a multiple of 256) to n / 256 stored super-blocks, the bytes of
// ggml's quantize_row_q*_K_ref: search, codes, pack.
void quantize_kquant_ref(
    const float* x,
    int64_t n,
    KQuantType type,
    uint8_t* out);
// Stored super-blocks back to n floats, as ggml's dequantize_row_q*_K.
void dequantize_kquant_ref(
    const uint8_t* blocks,
    int64_t n,
    KQuantType type,
    float* out);

// Fake-quant of super-blocks [block_begin, block_end), each 256 consecutive
// elements of x: y = dequantize(quantize(x)), as ggml would store and read
// them, except that y is NaN where x is NaN (a diverging run stays visible).
// mask[i] as in kquant_codes; may be null. T = float or BFloat16 (the search
// runs on the float values).
template <typename T>
void fake_quant_kquant_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    KQuantType type,
    int64_t block_begin,
    int64_t block_end);

} // namespace qat::kernels
