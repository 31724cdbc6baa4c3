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
};

// Every GGUF block type, in GgufType order.
const GgufTypeInfo* gguf_types(int* count);
const GgufTypeInfo& gguf_type_info(GgufType type);
// The type called `name`, or nullptr.
const GgufTypeInfo* find_gguf_type(std::string_view name);

// Kept for the 32-value types' callers: gguf_type_info(type).block_bytes.
int64_t gguf_block_bytes(GgufType type);

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

} // namespace qat::kernels
