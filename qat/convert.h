// convert: real low-precision weights. Each quantized layer's weight becomes a
// QuantizedWeight (int8 codes, int4 codes packed two per byte, or FP8 e4m3 /
// e5m2 values) with its scales and zero points, and the layer's forward then
// dequantizes that weight and runs: the quantized reference forward. Because
// the codes are computed with the fake-quant kernels' exact float arithmetic,
// the dequantized weight equals the fake-quantized one bit for bit, so the
// converted model computes what the trained one computed.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>

#include "qat/spec.h"

namespace qat {

struct QuantizedWeight {
  QuantSpec spec;
  std::vector<int64_t> shape; // of the (flattened, for convs) weight
  torch::Tensor data;         // int8 codes; uint8 [.., n/2] for <= 4 bits
                              // (two codes a byte, low nibble first, offset
                              // to unsigned); float8 values for FP8; GGUF:
                              // ggml's block bytes, uint8 [.., n/block*bytes]
  torch::Tensor scale;        // float32, in the qat ops' layout for `spec`
                              // (GGUF: each block's stored half d,
                              // [.., n/block])
  torch::Tensor zero_point;   // int32, same shape (empty for FP8, GGUF and
                              // the microscaling formats)
  // Microscaling formats (NVFP4, MXFP4, MXFP8) store what compressed-tensors'
  // compressors store (kernels/ref/microscale_ref.h): `data` the e2m1 codes
  // two a byte (uint8 [.., n/2]) or the e4m3fn values (float8 [.., n]),
  // `scale` each block's scale byte (float8_e4m3fn for NVFP4, uint8 e8m0 for
  // MX, [.., n/block]), and NVFP4's float32 global scale [1] here.
  torch::Tensor global_scale;

  // Quantizes `weight` with `spec` and the given scale / zero point (GGUF
  // specs compute their own from each block; for a K-quant, `scale` may be
  // the quantizer's kept representation, uint8, and the codes follow it; a
  // microscaling spec computes its block scales, and NVFP4 takes `scale` as
  // its global scale).
  static QuantizedWeight quantize(
      const torch::Tensor& weight,
      const QuantSpec& spec,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point);
  // The integer codes (int32) or FP8 / FP4 element values (float32),
  // unpacked (GGUF: see kernels::gguf_codes_ref).
  torch::Tensor codes() const;
  // (codes - zero_point) * scale, or fp8 * scale, in float32 and `shape`.
  torch::Tensor dequantize() const;
  int64_t storage_bytes() const;
};

// Converts every prepared layer with a weight quantizer; returns how many.
// Activation quantizers stay as they are (they run at inference too).
int64_t convert(torch::nn::Module& model);

// The converted weights by layer name (for saving, exporting and tests).
std::map<std::string, const QuantizedWeight*> quantized_weights(
    torch::nn::Module& model);

// A converted model's quantized weights in one safetensors file: for layer L,
// "L.weight" (its data as stored above), "L.weight_scale",
// "L.weight_zero_point" (integer formats) and "L.weight_shape", with each
// layer's spec in the metadata ("qat.spec.L"). The float parameters are not
// in it (trainers/models/weights.h saves those).
void save_converted(torch::nn::Module& model, const std::string& path);
// Puts such a file's weights into a model prepared with the same specs, as
// convert() would have: every quantized layer must be in the file with the
// same spec and shapes. Everything is checked first; errors name the file and
// the layer, and leave the model as it was.
void load_converted(torch::nn::Module& model, const std::string& path);

} // namespace qat
