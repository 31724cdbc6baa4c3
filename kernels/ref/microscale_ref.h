// Microscaling formats on raw pointers: NVFP4, MXFP4 and MXFP8 scales,
// fake-quant for training, and the exact bytes compressed-tensors 0.20.0 writes
// to a safetensors checkpoint (what vLLM loads), for export. The scalar rules,
// each with the compressed-tensors function it reproduces, are in
// kernels/microscale_math.h; tests/python/test_microscale.py checks every
// function here against compressed-tensors itself, bit for bit.
//
// A tensor is `rows` rows of `cols` float32 values (cols a multiple of the
// block size: 16 for NVFP4, 32 for MX); blocks run along each row, and a
// tensor's scale codes are rows x (cols / block size) bytes, row-major: the
// shape of the checkpoint's weight_scale. Float32 inputs only:
// compressed-tensors computes in the weight's dtype, and a bfloat16 weight's
// scales would need bfloat16 arithmetic.
#pragma once

#include <cstdint>
#include <string_view>

#include "kernels/microscale_math.h"

namespace qat::kernels {

struct MicroscaleFormatInfo {
  MicroscaleFormat format;
  const char* name;   // "nvfp4", "mxfp4", "mxfp8"
  const char* preset; // compressed-tensors' preset scheme: "NVFP4", ...
  // quantization_config's "format": nvfp4-pack-quantized, mxfp4-pack-quantized,
  // mxfp8-quantized (the compressor infer_module_format picks for the preset).
  const char* compression_format;
  int block_size;    // values per scale: 16 or 32
  int element_bits;  // 4 (e2m1) or 8 (e4m3fn)
  bool global_scale; // NVFP4: a float32 weight_global_scale [1]
  // The stored tensors (safetensors dtype names): the values, packed two e2m1
  // codes per byte (U8 [rows, cols / 2], element 2i in the low nibble) or one
  // e4m3fn code per value (F8_E4M3 [rows, cols]); the scales, F8_E4M3 or U8
  // [rows, cols / block_size].
  const char* values_tensor; // "weight_packed" or "weight"
  const char* values_dtype;  // "U8" or "F8_E4M3"
  const char* scale_dtype;   // "F8_E4M3" or "U8"
  // GGML_TYPE_* of ggml's block type that holds these blocks exactly, 0 if
  // none: MXFP4 is GGML_TYPE_MXFP4 (39). ggml's NVFP4 (40) has no per-tensor
  // scale, so a block under a global scale is not one of its values; ggml
  // has no MXFP8.
  uint32_t gguf_type;
  int gguf_block_bytes; // bytes of ggml's block (MXFP4: 17), 0 if none
};

// Every format, in MicroscaleFormat order.
const MicroscaleFormatInfo* microscale_formats(int* count);
const MicroscaleFormatInfo& microscale_format_info(MicroscaleFormat format);
// The format called `name` ("nvfp4", "mxfp4", "mxfp8"), or nullptr.
const MicroscaleFormatInfo* find_microscale_format(std::string_view name);

// (a) Scales, dynamic: what compressed-tensors' calculate_qparams gives for a
// weight observed by a min-max observer (the amax of each block, or of the
// tensor).
//
// The largest magnitude of n values, NaN if one is NaN.
float microscale_amax_ref(const float* x, int64_t n);
// The global scale of a tensor of n values: NVFP4's nvfp4_global_scale of its
// amax (generate_gparam of its aminmax); 1 for the MX formats, which have none.
float microscale_global_scale_ref(
    const float* x,
    int64_t n,
    MicroscaleFormat format);
// The scale code of one block (block_size consecutive values): NVFP4's
// e4m3fn code under global_scale, or the MX exponent code (0..255; 255 is
// the inf scale of a block with a NaN or a magnitude from 1.75 * 2^127).
uint8_t microscale_block_scale_ref(
    const float* block,
    MicroscaleFormat format,
    float global_scale);
// Every block's code: rows * cols / block_size bytes.
void microscale_scales_ref(
    const float* x,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    float global_scale,
    uint8_t* scale_codes);

// (b) Fake-quant of rows x cols values under given scale codes (dynamic ones
// from microscale_scales_ref, or fixed ones): y = x' (NaN stays NaN; a block
// with a NaN scale, or an MX block with the inf scale, is NaN throughout, as
// in compressed-tensors), mask[i] = 1 where x[i] was not clipped (the
// straight-through gradient), 0 where it was or is NaN. mask may be null; y
// may be x.
void fake_quant_microscale_ref(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale);

// (c) The checkpoint's bytes.
//
// Bytes of the values tensor: rows * cols / 2 for the e2m1 formats, rows *
// cols for MXFP8.
int64_t microscale_values_bytes(
    MicroscaleFormat format,
    int64_t rows,
    int64_t cols);
// The stored values (weight_packed or weight) and scales (weight_scale,
// rows * cols / block_size bytes) of x under its scale codes, as the
// compressor compress() writes them; NVFP4's weight_global_scale is
// global_scale itself (float32).
void pack_microscale_ref(
    const float* x,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* values,
    uint8_t* stored_scales);
// Stored bytes back to values: code value * stored scale (NVFP4: * (e4m3fn
// scale / global_scale)), computed in float32. T = BFloat16 rounds that (half
// to even) to what the compressor's decompress() returns, a bfloat16 weight.
template <typename T>
void unpack_microscale_ref(
    const uint8_t* values,
    const uint8_t* stored_scales,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    float global_scale,
    T* out);

// (d) GGUF, for the formats ggml has (gguf_type != 0): ggml's block_mxfp4
// (ggml-common.h) is {uint8 e; uint8 qs[16]}, the e8m0 exponent byte and the
// e2m1 codes, element j's in the low nibble of qs[j] and element j + 16's in
// its high nibble. dequantize_row_mxfp4 reads kvalues_mxfp4[code] (e2m1's
// values doubled, code 8 = -0 read as 0) * GGML_E8M0_TO_FP32_HALF(e) =
// 2^(e - 128), which is e2m1(code) * 2^(e - 127): what compressed-tensors'
// decompress reads from the same code and scale byte, in float32, exactly.
//
// The GGUF blocks of n values (a multiple of 32) stored as pack_microscale_ref
// stores them (values, stored_scales): the same codes and scale bytes,
// rearranged, so that the GGUF file serves what the compressed-tensors
// checkpoint serves.
void pack_gguf_microscale_ref(
    const uint8_t* values,
    const uint8_t* stored_scales,
    int64_t n,
    MicroscaleFormat format,
    uint8_t* blocks);
// ggml's blocks back to n floats, as dequantize_row_mxfp4 computes them.
void unpack_gguf_microscale_ref(
    const uint8_t* blocks,
    int64_t n,
    MicroscaleFormat format,
    float* out);
// The format stored as GGML_TYPE_* `ggml_type`, or nullptr.
const MicroscaleFormatInfo* find_gguf_microscale_format(uint32_t ggml_type);

} // namespace qat::kernels
