// Internal to kernels/ref: the block kernels of one instruction set, defined
// in block_fast.cpp and put into that instruction set's FastKernelTable by
// fake_quant_fast.cpp. Both files are compiled once per instruction set with
// QAT_KERNELS_ABI = abi_<isa>, so each build's functions have their own
// symbols.
#pragma once

#include "kernels/ref/block_fast.h"

namespace qat::kernels {
inline namespace QAT_KERNELS_ABI {

float microscale_amax_isa(const float* x, int64_t n);

void fake_quant_microscale_isa(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* scale_codes_out);

template <typename T>
void fake_quant_gguf_isa(
    const T* x,
    T* y,
    uint8_t* mask,
    int type, // GgufType
    int64_t block_begin,
    int64_t block_end);

template <typename T>
void fake_quant_gguf_fixed_isa(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    int type, // GgufType
    int64_t block_begin,
    int64_t block_end);

} // namespace QAT_KERNELS_ABI
} // namespace qat::kernels
