#include "kernels/ref/gguf_ref.h"

#include "kernels/ref/gguf_kquant_ref.h"

namespace qat::kernels {
namespace {

// ggml's block layouts (ggml-common.h): block_q8_0 {d, qs[32]}, block_q4_0
// {d, qs[16]}, block_q5_0 {d, qh[4], qs[16]}, block_q5_1 {d, m, qh[4],
// qs[16]}, block_q4_K {d, dmin, scales[12], qs[128]}, block_q5_K {d, dmin,
// scales[12], qh[32], qs[128]}, block_q6_K {ql[128], qh[64], scales[16], d}.
constexpr GgufTypeInfo kTypes[] = {
    {GgufType::q8_0, "q8_0", 8, 32, 34, 8, false, 0, 0, 0},
    {GgufType::q4_0, "q4_0", 2, 32, 18, 4, false, 0, 0, 0},
    {GgufType::q5_0, "q5_0", 6, 32, 22, 5, false, 0, 0, 0},
    {GgufType::q5_1, "q5_1", 7, 32, 24, 5, true, 0, 0, 0},
    {GgufType::q4_k, "q4_k", 12, 256, 144, 4, true, 0, 0, 16},
    {GgufType::q5_k, "q5_k", 13, 256, 176, 5, true, 0, 0, 16},
    {GgufType::q6_k, "q6_k", 14, 256, 210, 6, false, 208, 192, 18},
};

KQuantType kquant_type(GgufType type) {
  return type == GgufType::q4_k ? KQuantType::q4_k
      : type == GgufType::q5_k  ? KQuantType::q5_k
                                : KQuantType::q6_k;
}

void put_half(uint8_t* at, uint16_t bits) {
  at[0] = static_cast<uint8_t>(bits & 0xFFu);
  at[1] = static_cast<uint8_t>(bits >> 8);
}

uint16_t get_half(const uint8_t* at) {
  return static_cast<uint16_t>(at[0] | at[1] << 8);
}

// One 32-value block's bytes: Q8_0's int8 codes; 4- and 5-bit codes with
// element j in the low nibble of qs[j] and element j + 16 in its high nibble,
// and for 5 bits the fifth bit of element j in bit j of the little-endian
// qh.
void pack_block(GgufType type, const GgufBlock& block, uint8_t* o) {
  put_half(o, block.d_bits);
  if (type == GgufType::q8_0) {
    for (int j = 0; j < kGgufBlockSize; ++j)
      o[2 + j] = static_cast<uint8_t>(block.codes[j]);
    return;
  }
  uint8_t* qs = o + 2;
  if (type == GgufType::q5_1) {
    put_half(o + 2, block.m_bits);
    qs = o + 4;
  }
  constexpr int kHalf = kGgufBlockSize / 2;
  if (type == GgufType::q5_0 || type == GgufType::q5_1) {
    uint32_t qh = 0;
    for (int j = 0; j < kGgufBlockSize; ++j)
      qh |= static_cast<uint32_t>((block.codes[j] >> 4) & 1) << j;
    for (int b = 0; b < 4; ++b)
      qs[b] = static_cast<uint8_t>(qh >> (8 * b));
    qs += 4;
  }
  for (int j = 0; j < kHalf; ++j)
    qs[j] = static_cast<uint8_t>(
        (block.codes[j] & 0x0F) | ((block.codes[j + kHalf] & 0x0F) << 4));
}

// The unsigned codes of one stored 32-value block (Q8_0: signed) and its
// halves.
void unpack_block(
    GgufType type,
    const uint8_t* in,
    int32_t* codes,
    float& d,
    float& m) {
  d = half_bits_to_float(get_half(in));
  m = 0.0f;
  if (type == GgufType::q8_0) {
    for (int j = 0; j < kGgufBlockSize; ++j)
      codes[j] = static_cast<int8_t>(in[2 + j]);
    return;
  }
  const uint8_t* qs = in + 2;
  if (type == GgufType::q5_1) {
    m = half_bits_to_float(get_half(in + 2));
    qs = in + 4;
  }
  uint32_t qh = 0;
  if (type == GgufType::q5_0 || type == GgufType::q5_1) {
    qh = static_cast<uint32_t>(qs[0]) | static_cast<uint32_t>(qs[1]) << 8 |
        static_cast<uint32_t>(qs[2]) << 16 | static_cast<uint32_t>(qs[3]) << 24;
    qs += 4;
  }
  constexpr int kHalf = kGgufBlockSize / 2;
  for (int j = 0; j < kHalf; ++j) {
    codes[j] = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    codes[j + kHalf] =
        (qs[j] >> 4) | static_cast<int>(((qh >> (j + kHalf)) & 1u) << 4);
  }
}

// A representation as ggml stores it: the bytes of a block packed with zero
// codes, outside the codes.
void write_representation(
    const GgufTypeInfo& info,
    const KQuantRepresentation& rep,
    uint8_t* bytes) {
  uint8_t block[256];
  const uint8_t zero_codes[kKQuantBlockSize] = {};
  kquant_pack(kquant_type(info.type), rep, zero_codes, block);
  for (int i = 0; i < info.representation_bytes; ++i)
    bytes[i] = block[info.representation_offset + i];
}

// And back: a block with those bytes and zero codes, unpacked.
KQuantRepresentation read_representation(
    const GgufTypeInfo& info,
    const uint8_t* bytes) {
  uint8_t block[256] = {};
  for (int i = 0; i < info.representation_bytes; ++i)
    block[info.representation_offset + i] = bytes[i];
  KQuantRepresentation rep;
  uint8_t codes[kKQuantBlockSize];
  kquant_unpack(kquant_type(info.type), block, rep, codes);
  return rep;
}

} // namespace

const GgufTypeInfo* gguf_types(int* count) {
  *count = static_cast<int>(sizeof kTypes / sizeof kTypes[0]);
  return kTypes;
}

const GgufTypeInfo& gguf_type_info(GgufType type) {
  return kTypes[static_cast<int>(type)];
}

const GgufTypeInfo* find_gguf_type(std::string_view name) {
  for (const auto& info : kTypes) {
    if (name == info.name)
      return &info;
  }
  return nullptr;
}

template <typename T>
void fake_quant_gguf_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    GgufType type,
    int64_t block_begin,
    int64_t block_end) {
  if (gguf_is_kquant(type)) {
    fake_quant_kquant_ref(
        x, y, mask, kquant_type(type), block_begin, block_end);
    return;
  }
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t at = b * kGgufBlockSize;
    gguf_fake_quant_block(type, x + at, y + at, mask ? mask + at : nullptr);
  }
}

void quantize_gguf_ref(const float* x, int64_t n, GgufType type, uint8_t* out) {
  if (gguf_is_kquant(type)) {
    quantize_kquant_ref(x, n, kquant_type(type), out);
    return;
  }
  const int64_t bytes = gguf_type_info(type).block_bytes;
  for (int64_t b = 0; b < n / kGgufBlockSize; ++b)
    pack_block(
        type,
        gguf_quantize_block(type, x + b * kGgufBlockSize),
        out + b * bytes);
}

void dequantize_gguf_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    float* out) {
  if (gguf_is_kquant(type)) {
    dequantize_kquant_ref(blocks, n, kquant_type(type), out);
    return;
  }
  const int64_t bytes = gguf_type_info(type).block_bytes;
  const int offset = gguf_code_offset(type);
  int32_t codes[kGgufBlockSize];
  for (int64_t b = 0; b < n / kGgufBlockSize; ++b) {
    float d, m;
    unpack_block(type, blocks + b * bytes, codes, d, m);
    float* o = out + b * kGgufBlockSize;
    for (int j = 0; j < kGgufBlockSize; ++j) {
      // ggml's dequantize_row_q5_1: x0 * d + m, unfused (the product is
      // exact, so a fused one would give the same).
      o[j] = type == GgufType::q5_1 ? static_cast<float>(codes[j]) * d + m
                                    : static_cast<float>(codes[j] - offset) * d;
    }
  }
}

void gguf_codes_ref(
    const uint8_t* blocks,
    int64_t n,
    GgufType type,
    int32_t* out) {
  const auto& info = gguf_type_info(type);
  for (int64_t b = 0; b < n / info.block_size; ++b) {
    const uint8_t* in = blocks + b * info.block_bytes;
    int32_t* o = out + b * info.block_size;
    if (gguf_is_kquant(type)) {
      const KQuantType k = kquant_type(type);
      KQuantRepresentation rep;
      uint8_t codes[kKQuantBlockSize];
      kquant_unpack(k, in, rep, codes);
      const int zero = k == KQuantType::q6_k ? 32 : 0;
      for (int j = 0; j < kKQuantBlockSize; ++j)
        o[j] = codes[j] - zero;
    } else {
      float d, m;
      unpack_block(type, in, o, d, m);
      const int offset = gguf_code_offset(type);
      for (int j = 0; j < kGgufBlockSize; ++j)
        o[j] -= offset;
    }
  }
}

void gguf_search_ref(
    const float* x,
    int64_t n,
    GgufType type,
    uint8_t* representations) {
  const auto& info = gguf_type_info(type);
  for (int64_t b = 0; b < n / kKQuantBlockSize; ++b) {
    KQuantRepresentation rep;
    kquant_search(kquant_type(type), x + b * kKQuantBlockSize, rep, nullptr);
    write_representation(
        info, rep, representations + b * info.representation_bytes);
  }
}

template <typename T>
void fake_quant_gguf_fixed_ref(
    const T* x,
    T* y,
    uint8_t* mask,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end) {
  const auto& info = gguf_type_info(type);
  const KQuantType k = kquant_type(type);
  float values[kKQuantBlockSize];
  for (int64_t b = block_begin; b < block_end; ++b) {
    const KQuantRepresentation rep = read_representation(
        info, representations + b * info.representation_bytes);
    const int64_t at = b * kKQuantBlockSize;
    for (int i = 0; i < kKQuantBlockSize; ++i)
      values[i] = to_float(x[at + i]);
    uint8_t codes[kKQuantBlockSize] = {};
    kquant_fake_quant(
        k, rep, values, codes, values, mask ? mask + at : nullptr);
    for (int i = 0; i < kKQuantBlockSize; ++i)
      y[at + i] = from_float<T>(values[i]);
  }
}

void quantize_gguf_fixed_ref(
    const float* x,
    int64_t n,
    GgufType type,
    const uint8_t* representations,
    uint8_t* out) {
  const auto& info = gguf_type_info(type);
  const KQuantType k = kquant_type(type);
  for (int64_t b = 0; b < n / kKQuantBlockSize; ++b) {
    const KQuantRepresentation rep = read_representation(
        info, representations + b * info.representation_bytes);
    uint8_t codes[kKQuantBlockSize] = {};
    kquant_codes(k, rep, x + b * kKQuantBlockSize, codes, nullptr);
    kquant_pack(k, rep, codes, out + b * info.block_bytes);
  }
}

void gguf_representation_grad_ref(
    const float* x,
    const float* grad_y,
    const uint8_t* representations,
    GgufType type,
    int64_t block_begin,
    int64_t block_end,
    float* grad_d,
    float* grad_dmin) {
  const auto& info = gguf_type_info(type);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const KQuantRepresentation rep = read_representation(
        info, representations + b * info.representation_bytes);
    double d = 0.0, dmin = 0.0;
    kquant_representation_grad(
        kquant_type(type),
        rep,
        x + b * kKQuantBlockSize,
        grad_y + b * kKQuantBlockSize,
        d,
        dmin);
    grad_d[b] = static_cast<float>(d);
    grad_dmin[b] = static_cast<float>(dmin);
  }
}

template void fake_quant_gguf_fixed_ref<float>(
    const float*,
    float*,
    uint8_t*,
    const uint8_t*,
    GgufType,
    int64_t,
    int64_t);
template void fake_quant_gguf_fixed_ref<BFloat16>(
    const BFloat16*,
    BFloat16*,
    uint8_t*,
    const uint8_t*,
    GgufType,
    int64_t,
    int64_t);

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
