#include "kernels/ref/microscale_ref.h"

#include <cassert>
#include <cstring>

namespace qat::kernels {
namespace {

// The presets (quantization/quant_scheme.py) and the compressors
// infer_module_format picks for them (compressors/format.py): NVFP4
// TENSOR_GROUP 16 with e4m3fn scales -> NVFP4PackedCompressor; MXFP4 GROUP 32
// with uint8 scales -> MXFP4PackedCompressor; MXFP8 GROUP 32 with uint8
// scales -> MXFP8QuantizationCompressor.
constexpr MicroscaleFormatInfo kFormats[] = {
    {MicroscaleFormat::nvfp4,
     "nvfp4",
     "NVFP4",
     "nvfp4-pack-quantized",
     16,
     4,
     true,
     "weight_packed",
     "U8",
     "F8_E4M3",
     0,
     0},
    {MicroscaleFormat::mxfp4,
     "mxfp4",
     "MXFP4",
     "mxfp4-pack-quantized",
     32,
     4,
     false,
     "weight_packed",
     "U8",
     "U8",
     39,
     17},
    {MicroscaleFormat::mxfp8,
     "mxfp8",
     "MXFP8",
     "mxfp8-quantized",
     32,
     8,
     false,
     "weight",
     "F8_E4M3",
     "U8",
     0,
     0},
};

// Blocks of a [rows, cols] tensor, each along a row.
int64_t block_count(int64_t rows, int64_t cols, MicroscaleFormat format) {
  const int block = microscale_block_size(format);
  assert(cols % block == 0);
  return rows * (cols / block);
}

} // namespace

const MicroscaleFormatInfo* microscale_formats(int* count) {
  *count = static_cast<int>(sizeof kFormats / sizeof kFormats[0]);
  return kFormats;
}

const MicroscaleFormatInfo& microscale_format_info(MicroscaleFormat format) {
  return kFormats[static_cast<int>(format)];
}

const MicroscaleFormatInfo* find_microscale_format(std::string_view name) {
  for (const MicroscaleFormatInfo& info : kFormats)
    if (name == info.name)
      return &info;
  return nullptr;
}

float microscale_amax_ref(const float* x, int64_t n) {
  // calculate_qparams' max(|min(min, 0)|, |max(max, 0)|) of torch.amin and
  // torch.amax is the largest magnitude (0 for an empty or all-zero block),
  // NaN as soon as one value is NaN.
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    m = max_magnitude(m, x[i]);
  return m;
}

float microscale_global_scale_ref(
    const float* x,
    int64_t n,
    MicroscaleFormat format) {
  return format == MicroscaleFormat::nvfp4
      ? nvfp4_global_scale(microscale_amax_ref(x, n))
      : 1.0f;
}

uint8_t microscale_block_scale_ref(
    const float* block,
    MicroscaleFormat format,
    float global_scale) {
  return microscale_scale_code(
      format,
      microscale_amax_ref(block, microscale_block_size(format)),
      global_scale);
}

void microscale_scales_ref(
    const float* x,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    float global_scale,
    uint8_t* scale_codes) {
  const int block = microscale_block_size(format);
  const int64_t blocks = block_count(rows, cols, format);
  for (int64_t b = 0; b < blocks; ++b)
    scale_codes[b] =
        microscale_block_scale_ref(x + b * block, format, global_scale);
}

void fake_quant_microscale_ref(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale) {
  const int block = microscale_block_size(format);
  const int64_t blocks = block_count(rows, cols, format);
  for (int64_t b = 0; b < blocks; ++b) {
    const float scale =
        microscale_scale_value(format, scale_codes[b], global_scale);
    for (int64_t i = b * block; i < (b + 1) * block; ++i) {
      const AffineQuantized q = microscale_fake_quant(format, x[i], scale);
      y[i] = q.value;
      if (mask)
        mask[i] = q.in_range ? 1 : 0;
    }
  }
}

int64_t microscale_values_bytes(
    MicroscaleFormat format,
    int64_t rows,
    int64_t cols) {
  return rows * cols * microscale_format_info(format).element_bits / 8;
}

void pack_microscale_ref(
    const float* x,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    const uint8_t* scale_codes,
    float global_scale,
    uint8_t* values,
    uint8_t* stored_scales) {
  const int block = microscale_block_size(format);
  const int64_t blocks = block_count(rows, cols, format);
  for (int64_t b = 0; b < blocks; ++b) {
    const float scale =
        microscale_scale_value(format, scale_codes[b], global_scale);
    stored_scales[b] = microscale_stored_scale(format, scale_codes[b]);
    const int64_t begin = b * block;
    if (format == MicroscaleFormat::mxfp8) {
      for (int64_t i = begin; i < begin + block; ++i)
        values[i] = microscale_element_code(format, x[i], scale);
      continue;
    }
    // pack_fp4_to_uint8: indices.reshape(-1, 2), packed = [:, 0] | [:, 1] << 4
    // (element 2i in the low nibble of byte i, row-major over the tensor).
    for (int64_t i = begin; i < begin + block; i += 2)
      values[i / 2] = static_cast<uint8_t>(
          microscale_element_code(format, x[i], scale) |
          microscale_element_code(format, x[i + 1], scale) << 4);
  }
}

template <typename T>
void unpack_microscale_ref(
    const uint8_t* values,
    const uint8_t* stored_scales,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    float global_scale,
    T* out) {
  const int block = microscale_block_size(format);
  const int64_t blocks = block_count(rows, cols, format);
  for (int64_t b = 0; b < blocks; ++b) {
    // NVFP4: _dequantize divides the (bfloat16) scale by the float32 global
    // scale, in float32 since the global scale is a 1-element tensor; MX:
    // decompress_mx_scale's power of two, exact in bfloat16 as in float32.
    const float scale =
        microscale_stored_scale_value(format, stored_scales[b], global_scale);
    for (int64_t i = b * block; i < (b + 1) * block; ++i) {
      const uint8_t code = format == MicroscaleFormat::mxfp8
          ? values[i]
          : static_cast<uint8_t>((values[i / 2] >> (4 * (i & 1))) & 0xFu);
      // NVFP4: x_q.to(float32) * scale, then .to(bfloat16). MXFP4 and MXFP8
      // multiply in bfloat16 (each product is rounded once, from the exact
      // float32 product); the same result.
      out[i] = from_float<T>(microscale_element_value(format, code) * scale);
    }
  }
}

template void unpack_microscale_ref<float>(
    const uint8_t*,
    const uint8_t*,
    int64_t,
    int64_t,
    MicroscaleFormat,
    float,
    float*);
template void unpack_microscale_ref<BFloat16>(
    const uint8_t*,
    const uint8_t*,
    int64_t,
    int64_t,
    MicroscaleFormat,
    float,
    BFloat16*);

const MicroscaleFormatInfo* find_gguf_microscale_format(uint32_t ggml_type) {
  for (const MicroscaleFormatInfo& info : kFormats)
    if (info.gguf_type != 0 && info.gguf_type == ggml_type)
      return &info;
  return nullptr;
}

void pack_gguf_microscale_ref(
    const uint8_t* values,
    const uint8_t* stored_scales,
    int64_t n,
    MicroscaleFormat format,
    uint8_t* blocks) {
  const auto& info = microscale_format_info(format);
  assert(info.gguf_type != 0 && n % info.block_size == 0);
  constexpr int kHalf = 16;
  const auto code = [&](int64_t i) {
    return static_cast<uint8_t>((values[i / 2] >> (4 * (i & 1))) & 0xFu);
  };
  for (int64_t b = 0; b < n / info.block_size; ++b) {
    uint8_t* out = blocks + b * info.gguf_block_bytes;
    const int64_t at = b * info.block_size;
    out[0] = stored_scales[b];
    for (int j = 0; j < kHalf; ++j)
      out[1 + j] =
          static_cast<uint8_t>(code(at + j) | code(at + j + kHalf) << 4);
  }
}

void unpack_gguf_microscale_ref(
    const uint8_t* blocks,
    int64_t n,
    MicroscaleFormat format,
    float* out) {
  const auto& info = microscale_format_info(format);
  assert(info.gguf_type != 0 && n % info.block_size == 0);
  constexpr int kHalf = 16;
  for (int64_t b = 0; b < n / info.block_size; ++b) {
    const uint8_t* in = blocks + b * info.gguf_block_bytes;
    // GGML_E8M0_TO_FP32_HALF: 2^(e - 128), a float32 subnormal for e < 2.
    const uint32_t half_bits =
        in[0] < 2 ? 0x00200000u << in[0] : uint32_t{in[0] - 1u} << 23;
    float half_scale;
    std::memcpy(&half_scale, &half_bits, 4);
    float* o = out + b * info.block_size;
    for (int j = 0; j < kHalf; ++j) {
      // kvalues_mxfp4 (int8): e2m1 doubled, -0 as 0; the products are exact.
      const uint8_t low = in[1 + j] & 0xFu, high = in[1 + j] >> 4;
      o[j] = 2.0f * e2m1_value(low) * half_scale + 0.0f;
      o[j + kHalf] = 2.0f * e2m1_value(high) * half_scale + 0.0f;
    }
  }
}

} // namespace qat::kernels
