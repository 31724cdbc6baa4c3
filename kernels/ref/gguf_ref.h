// GGUF block formats (ggml's Q8_0 and Q4_0) on raw pointers: fake-quant for
// training, and the exact bytes ggml stores, for export. The rules are in
// kernels/quant_math.h (gguf_quantize_block); these are loops around them.
#pragma once

#include <cstdint>

#include "kernels/quant_math.h"

namespace qat::kernels {

// Bytes of one stored block: Q8_0 = half d + 32 int8 codes (34 bytes);
// Q4_0 = half d + 16 bytes, element j in the low nibble of byte j and element
// j + 16 in the high nibble (18 bytes). d is little-endian.
int64_t gguf_block_bytes(GgufType type);

// Fake-quant of blocks [block_begin, block_end), each kGgufBlockSize
// consecutive elements of x; mask[i] = 1 where x[i] was not clipped. mask may
// be null.
template <typename T>
void fake_quant_gguf_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end);

// n values (a multiple of kGgufBlockSize) to n / 32 stored blocks.
void quantize_gguf_ref(const float* x, int64_t n, GgufType type, uint8_t* out);
// Stored blocks back to n floats, as ggml's dequantize_row_q*_0 does.
void dequantize_gguf_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    float* out);

} // namespace qat::kernels
