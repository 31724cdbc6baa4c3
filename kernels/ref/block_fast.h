// Fast CPU kernels of the block formats: NVFP4 / MXFP4 / MXFP8 (microscale)
// and GGUF (the 32-value types, and the K-quants under a fixed
// representation). Each is bit-identical to its reference kernel
// (microscale_ref.h, gguf_ref.h), NaN, infinities, signed zeros and
// subnormals included, and is built for several instruction sets and chosen
// at run time like the other *_fast kernels (CpuIsa in fake_quant_ref.h).
// Single-threaded; the op layer splits a tensor into ranges of rows or blocks.
// Torch-free, on raw pointers.
#pragma once

#include <cstdint>

#include "kernels/microscale_math.h"
#include "kernels/quant_math.h"
#include "kernels/ref/fake_quant_ref.h"
#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"

namespace qat::kernels {

// microscale_amax_ref: the largest magnitude of n values, NaN if one is NaN
// (the same NaN: the magnitude of the last one).
float microscale_amax_fast(const float* x, int64_t n);

// microscale_scales_ref and fake_quant_microscale_ref fused, over rows x cols
// float32 values (cols a multiple of the format's block size, blocks along
// each row, as in microscale_ref.h).
//   scale_codes      the block scale codes to use (rows * cols / block_size
//                    bytes), or null: each block's code is computed from x in
//                    the same pass, as microscale_scales_ref computes it
//                    (global_scale is NVFP4's per-tensor value, from
//                    microscale_global_scale_ref; unused by the MX formats)
//   scale_codes_out  null, or receives the code each block was quantized with
//                    (may equal scale_codes)
//   y, mask          as fake_quant_microscale_ref: y may be x, mask may be
//                    null.
// A range of blocks is a range of rows of a tensor seen as [blocks, block
// size]: pass x, y, mask and the codes offset to the first block.
void fake_quant_microscale_fast(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* scale_codes_out);

// fake_quant_gguf_ref: blocks [block_begin, block_end) of the 32-value types
// (Q8_0, Q4_0, Q5_0, Q5_1); y may be x, mask may be null. The K-quants, whose
// search is not vectorised, run the reference kernel.
template <typename T>
void fake_quant_gguf_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end);

// fake_quant_gguf_fixed_ref: super-blocks [block_begin, block_end) of a K-quant
// (Q4_K, Q5_K, Q6_K) under their given representations; y may be x, mask may
// be null.
template <typename T>
void fake_quant_gguf_fixed_fast(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end);

} // namespace qat::kernels
