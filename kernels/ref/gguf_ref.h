// GGUF block formats on raw pointers: fake-quant for training, and the exact
// bytes ggml stores, for export. Every type qat trains is one row of
// gguf_types() (name, ggml's type id, block size and bytes); the 32-value
// blocks' rules are in kernels/quant_math.h (gguf_quantize_block), the
// K-quants' in kernels/ref/gguf_kquant_ref.h. Adding a type is a row here and
// its rules in one of those.
#pragma once

#include <cstdint>
#include <string_view>

#include "kernels/quant_math.h"

namespace qat::kernels {

struct GgufTypeInfo {
  GgufType type;
  const char* name; // "q4_k": as recipes, gguf-py and llama.cpp say it
  uint32_t ggml_id; // GGML_TYPE_*, the tensor type in a GGUF file
  int block_size;   // values per block: 32, or 256 for the K-quants
  int block_bytes;  // bytes ggml stores per block
  int bits;         // bits per code
  bool has_minimum; // codes are offset by a (sub-)block minimum
  int scale_offset; // byte offset of the block's half scale d
  // K-quants: where in the block the representation (half d, dmin, sub-block
  // scales and mins: everything but the codes) lies, and its bytes; 0 for
  // the 32-value types, which are always quantized from their values.
  int representation_offset;
  int representation_bytes;
};

// Every GGUF block type, in GgufType order.
const GgufTypeInfo* gguf_types(int* count);
const GgufTypeInfo& gguf_type_info(GgufType type);
// The type called `name`, or nullptr.
const GgufTypeInfo* find_gguf_type(std::string_view name);

// Fake-quant of blocks [block_begin, block_end), each block_size consecutive
// elements of x; mask[i] = 1 where x[i] was not clipped. mask may be null.
template <typename T>
void fake_quant_gguf_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end);

// n values (a multiple of the block size) to n / block_size stored blocks,
// the bytes of ggml's quantize_row_*_ref.
void quantize_gguf_ref(const float* x, int64_t n, GgufType type, uint8_t* out);
// Stored blocks back to n floats, as ggml's dequantize_row_* does.
void dequantize_gguf_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    float* out);
// The integer each stored value stands for before its scale: Q8_0's code,
// Q4_0 / Q5_0 / Q6_K's code minus its zero, Q5_1 / Q4_K / Q5_K's unsigned
// code (their minimum is applied after the scale).
void gguf_codes_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    int32_t* out);

// K-quants with a fixed representation: a trainer searches each super-block's
// representation once (ggml's search, as quantize_row_q*_K_ref does it) and
// keeps it, or learns it, while the codes follow the weights. A
// representation is stored as ggml stores it in the block: representation
// bytes per super-block, consecutive.
//
// The representations of n values (a multiple of 256).
void gguf_search_ref(
    const float* x,
    int64_t n,
    GgufType type,
    uint8_t* representations);
// Fake-quant of super-blocks [block_begin, block_end) under their given
// representations: each value's code as ggml's last pass rounds it, then
// dequantized; mask[i] = 1 where the code was not clipped. NaN stays NaN.
template <typename T>
void fake_quant_gguf_fixed_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end);
// The stored blocks of n values under their representations: what
// fake_quant_gguf_fixed_ref dequantizes to, bit for bit. With the
// representations gguf_search_ref found for the same values, these are
// quantize_gguf_ref's bytes, except in a sub-block whose scale is 0 (every
// code stands for the same value there; ggml keeps its search's codes, this
// writes 0).
void quantize_gguf_fixed_ref(
    const float* x,
    int64_t n,
    GgufType type,
    const uint8_t* representations,
    uint8_t* out);

// Learned K-quant representations: the gradients of
// sum(grad_y * fake_quant_gguf_fixed_ref(x)) with respect to the halves d and
// dmin of super-blocks [block_begin, block_end), grad_d[b] and grad_dmin[b]
// (0 for Q6_K), unscaled (kernels/ref/gguf_kquant_ref.h's
// kquant_representation_grad has the derivation).
void gguf_representation_grad_ref(
    const float* x,
    const float* grad_y,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end,
    float* grad_d,
    float* grad_dmin);

} // namespace qat::kernels
