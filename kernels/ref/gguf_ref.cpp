#include "kernels/ref/gguf_ref.h"

namespace qat::kernels {

int64_t gguf_block_bytes(GgufType type) {
  return type == GgufType::q8_0 ? 2 + kGgufBlockSize : 2 + kGgufBlockSize / 2;
}

template <typename T>
void fake_quant_gguf_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t at = b * kGgufBlockSize;
    gguf_fake_quant_block(type, x + at, y + at, mask ? mask + at : nullptr);
  }
}

void quantize_gguf_ref(const float* x, int64_t n, GgufType type, uint8_t* out) {
  const int64_t bytes = gguf_block_bytes(type);
  for (int64_t b = 0; b < n / kGgufBlockSize; ++b) {
    const GgufBlock block = gguf_quantize_block(type, x + b * kGgufBlockSize);
    uint8_t* o = out + b * bytes;
    o[0] = static_cast<uint8_t>(block.d_bits & 0xFFu);
    o[1] = static_cast<uint8_t>(block.d_bits >> 8);
    if (type == GgufType::q8_0) {
      for (int j = 0; j < kGgufBlockSize; ++j)
        o[2 + j] = static_cast<uint8_t>(block.codes[j]);
    } else {
      constexpr int kHalf = kGgufBlockSize / 2;
      for (int j = 0; j < kHalf; ++j)
        o[2 + j] = static_cast<uint8_t>(
            block.codes[j] | (block.codes[j + kHalf] << 4));
    }
  }
}

void dequantize_gguf_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    float* out) {
  const int64_t bytes = gguf_block_bytes(type);
  for (int64_t b = 0; b < n / kGgufBlockSize; ++b) {
    const uint8_t* in = blocks + b * bytes;
    const float d =
        half_bits_to_float(static_cast<uint16_t>(in[0] | in[1] << 8));
    float* o = out + b * kGgufBlockSize;
    if (type == GgufType::q8_0) {
      for (int j = 0; j < kGgufBlockSize; ++j)
        o[j] = static_cast<float>(static_cast<int8_t>(in[2 + j])) * d;
    } else {
      constexpr int kHalf = kGgufBlockSize / 2;
      for (int j = 0; j < kHalf; ++j) {
        o[j] = static_cast<float>((in[2 + j] & 0x0F) - 8) * d;
        o[j + kHalf] = static_cast<float>((in[2 + j] >> 4) - 8) * d;
      }
    }
  }
}

template void fake_quant_gguf_ref<float>(
    const float*,
    float*,
    uint8_t*,
    GgufType,
    int64_t,
    int64_t);
template void fake_quant_gguf_ref<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    GgufType,
    int64_t,
    int64_t);

} // namespace qat::kernels
