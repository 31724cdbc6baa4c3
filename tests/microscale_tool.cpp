// Torch-free driver of kernels/ref/microscale_ref for
// tests/python/test_microscale.py, which compares what it writes with
// compressed-tensors. Raw little-endian files in and out.
//
//   microscale_tool quant FORMAT ROWS COLS IN.f32 OUTDIR [SCALES.u8 GLOBAL.f32]
//     FORMAT nvfp4 | mxfp4 | mxfp8; IN holds ROWS x COLS float32. With no
//     SCALES, the scales are the dynamic ones (microscale_global_scale_ref,
//     microscale_scales_ref); with SCALES (ROWS x COLS / block codes) and
//     GLOBAL (one float32), those are used. Writes to OUTDIR:
//       global.f32         the global scale (1 for MX)
//       scales.u8          the scale codes (NVFP4 e4m3fn, MX exponent 0..255)
//       fq.f32, mask.u8    fake-quant values and straight-through mask
//       values.u8          the stored values tensor (weight_packed / weight)
//       stored_scales.u8   the stored weight_scale bytes
//       unpacked.f32       unpack_microscale_ref<float> of those bytes
//       unpacked.bf16      unpack_microscale_ref<BFloat16> (uint16 bits)
//       gguf.u8            MXFP4 only: pack_gguf_microscale_ref of the
//                          stored bytes (ggml's block_mxfp4), and
//       gguf_unpacked.f32  unpack_gguf_microscale_ref of those blocks
//
//   microscale_tool codecs IN.f32 N OUTDIR
//     The scalar codecs of kernels/microscale_math.h on N float32 inputs and
//     on every code. Writes:
//       e2m1_value.f32 (16), e8m0_decode.f32 (256), mx_scale_value.f32 (256),
//       mx_stored_scale.u8 (256)
//       e2m1_code.u8, e2m1_round.f32, e8m0_encode.u8, mx_code_e2m1.u8,
//       mx_code_e4m3.u8, nvfp4_global.f32 (each N, of the inputs)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/ref/microscale_ref.h"

namespace {

using namespace qat::kernels;

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "microscale_tool: %s\n", message.c_str());
  std::exit(2);
}

template <typename T>
std::vector<T> read_file(const std::string& path, size_t count) {
  std::vector<T> data(count);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    fail("cannot open " + path);
  const size_t got = count ? std::fread(data.data(), sizeof(T), count, f) : 0;
  std::fclose(f);
  if (got != count)
    fail(path + ": expected " + std::to_string(count * sizeof(T)) + " bytes");
  return data;
}

template <typename T>
void write_file(
    const std::string& dir,
    const char* name,
    const T* data,
    size_t count) {
  const std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f)
    fail("cannot write " + path);
  if (count && std::fwrite(data, sizeof(T), count, f) != count)
    fail("short write to " + path);
  std::fclose(f);
}

template <typename T>
void write_file(
    const std::string& dir,
    const char* name,
    const std::vector<T>& v) {
  write_file(dir, name, v.data(), v.size());
}

int64_t parse_count(const char* s) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (!end || *end || v < 0)
    fail(std::string("not a count: ") + s);
  return v;
}

int quant(int argc, char** argv) {
  if (argc != 7 && argc != 9)
    fail("usage: quant FORMAT ROWS COLS IN.f32 OUTDIR [SCALES.u8 GLOBAL.f32]");
  const MicroscaleFormatInfo* info = find_microscale_format(argv[2]);
  if (!info)
    fail(std::string("unknown format ") + argv[2]);
  const MicroscaleFormat format = info->format;
  const int64_t rows = parse_count(argv[3]), cols = parse_count(argv[4]);
  if (cols % info->block_size)
    fail("COLS must be a multiple of " + std::to_string(info->block_size));
  const std::string out = argv[6];
  const int64_t n = rows * cols, blocks = n / info->block_size;
  const std::vector<float> x = read_file<float>(argv[5], n);

  float global;
  std::vector<uint8_t> scales(blocks);
  if (argc == 9) {
    scales = read_file<uint8_t>(argv[7], blocks);
    global = read_file<float>(argv[8], 1)[0];
  } else {
    global = microscale_global_scale_ref(x.data(), n, format);
    microscale_scales_ref(x.data(), rows, cols, format, global, scales.data());
  }

  std::vector<float> fq(n);
  std::vector<uint8_t> mask(n);
  fake_quant_microscale_ref(
      x.data(),
      fq.data(),
      mask.data(),
      rows,
      cols,
      format,
      scales.data(),
      global);

  std::vector<uint8_t> values(microscale_values_bytes(format, rows, cols));
  std::vector<uint8_t> stored(blocks);
  pack_microscale_ref(
      x.data(),
      rows,
      cols,
      format,
      scales.data(),
      global,
      values.data(),
      stored.data());
  std::vector<float> unpacked(n);
  std::vector<BFloat16> unpacked_bf16(n);
  unpack_microscale_ref(
      values.data(),
      stored.data(),
      rows,
      cols,
      format,
      global,
      unpacked.data());
  unpack_microscale_ref(
      values.data(),
      stored.data(),
      rows,
      cols,
      format,
      global,
      unpacked_bf16.data());

  write_file(out, "global.f32", &global, 1);
  write_file(out, "scales.u8", scales);
  write_file(out, "fq.f32", fq);
  write_file(out, "mask.u8", mask);
  write_file(out, "values.u8", values);
  write_file(out, "stored_scales.u8", stored);
  write_file(out, "unpacked.f32", unpacked);
  write_file(out, "unpacked.bf16", unpacked_bf16);
  if (info->gguf_type != 0) {
    std::vector<uint8_t> blocks(n / info->block_size * info->gguf_block_bytes);
    pack_gguf_microscale_ref(
        values.data(), stored.data(), n, format, blocks.data());
    std::vector<float> gguf_unpacked(n);
    unpack_gguf_microscale_ref(blocks.data(), n, format, gguf_unpacked.data());
    write_file(out, "gguf.u8", blocks);
    write_file(out, "gguf_unpacked.f32", gguf_unpacked);
  }
  return 0;
}

int codecs(int argc, char** argv) {
  if (argc != 5)
    fail("usage: codecs IN.f32 N OUTDIR");
  const int64_t n = parse_count(argv[3]);
  const std::vector<float> x = read_file<float>(argv[2], n);
  const std::string out = argv[4];

  std::vector<float> e2m1(16), e8m0(256), mx_value(256);
  std::vector<uint8_t> mx_stored(256);
  for (int c = 0; c < 16; ++c)
    e2m1[c] = e2m1_value(static_cast<uint8_t>(c));
  for (int c = 0; c < 256; ++c) {
    e8m0[c] = e8m0_decode(static_cast<uint8_t>(c));
    mx_value[c] = mx_scale_value(static_cast<uint8_t>(c));
    mx_stored[c] = mx_stored_scale(static_cast<uint8_t>(c));
  }
  std::vector<uint8_t> code(n), e8(n), mx4(n), mx8(n);
  std::vector<float> rounded(n), global(n);
  for (int64_t i = 0; i < n; ++i) {
    code[i] = e2m1_code(x[i]);
    rounded[i] = e2m1_round(x[i]);
    e8[i] = e8m0_encode(x[i]);
    mx4[i] = mx_scale_code(x[i], kE2m1Emax);
    mx8[i] = mx_scale_code(x[i], kE4m3Emax);
    global[i] = nvfp4_global_scale(x[i]);
  }
  write_file(out, "e2m1_value.f32", e2m1);
  write_file(out, "e8m0_decode.f32", e8m0);
  write_file(out, "mx_scale_value.f32", mx_value);
  write_file(out, "mx_stored_scale.u8", mx_stored);
  write_file(out, "e2m1_code.u8", code);
  write_file(out, "e2m1_round.f32", rounded);
  write_file(out, "e8m0_encode.u8", e8);
  write_file(out, "mx_code_e2m1.u8", mx4);
  write_file(out, "mx_code_e4m3.u8", mx8);
  write_file(out, "nvfp4_global.f32", global);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "quant")
    return quant(argc, argv);
  if (argc >= 2 && std::string(argv[1]) == "codecs")
    return codecs(argc, argv);
  fail("usage: microscale_tool quant|codecs ...");
}
