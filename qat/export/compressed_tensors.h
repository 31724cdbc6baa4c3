// compressed-tensors, the quantized checkpoint format of vLLM and Hugging Face
// transformers (the one llm-compressor writes): a Hugging Face checkpoint
// folder whose config.json carries a "quantization_config" with quant_method
// "compressed-tensors", and whose safetensors hold each quantized layer L as
//
//   int-quantized    L.weight I8 [N, K]: the codes, one a byte
//   pack-quantized   L.weight_packed I32 [N, ceil(K*b/32)]: code + 2^(b-1),
//                    packed densely, element i of a row at bit i*b of its
//                    32-element group of b words (little end first), and
//                    L.weight_shape I64 [2]
//   float-quantized  L.weight F8_E4M3 [N, K]
//   nvfp4-pack-quantized, mxfp4-pack-quantized
//                    L.weight_packed U8 [N, K/2]: e2m1 codes, element 2i in
//                    the low nibble; L.weight_scale F8_E4M3 [N, K/16] (NVFP4)
//                    or U8 e8m0 [N, K/32] (MX); NVFP4's L.weight_global_scale
//                    F32 [1] and, for its inputs, L.input_global_scale F32 [1]
//   mxfp8-quantized  L.weight F8_E4M3 [N, K], L.weight_scale U8 [N, K/32]
//                    (kernels/ref/microscale_ref.h has each format's row)
//   every other format
//                    L.weight_scale F32 [N, 1] (channel), [N, K/g] (group)
//                    or [1] (tensor); L.weight_zero_point I8 in the scale's
//                    shape for affine weights (pack-quantized: packed as
//                    above along N); L.input_scale F32 [1] (and
//                    L.input_zero_point I8 [1] when affine) for static input
//                    activations, L.output_* likewise
//
// An FP8 KV cache (qat/modules/kv_cache.h) is the config's kv_cache_scheme,
// with A.k_scale and A.v_scale F32 [1] (strategy tensor) or [kv_heads, 1, 1]
// (attn_head) for each attention layer A, as vLLM and transformers read them.
//
// Each layer's format is the one compressed-tensors itself infers for its
// scheme (compressors/format.py): FP8 weights are float-quantized, integer
// weights with quantized inputs int-quantized, integer weights with float
// inputs pack-quantized. The formats' integers are signed: unsigned qat codes
// and zero points are shifted by -2^(b-1), which leaves (q - z) * s, and so
// every dequantized weight, as it was. The safetensors hold exactly the codes
// and scales of qat::convert, so compressed-tensors' decompressor gives the
// converted model's weights bit for bit.
//
// Layers with one quantization scheme are one config group targeting their
// class ("Linear"), with every float layer of that class in "ignore"; several
// schemes make one group each, targeting the layers by name. Above
// max_shard_bytes the tensors are split into model-0000i-of-0000n.safetensors
// with model.safetensors.index.json, as transformers shards.
//
// What the format cannot hold is refused by name: GGUF block specs (export
// them as GGUF), FP8 e5m2 (compressed-tensors stores e4m3 only), per-channel
// or per-group activations, narrow-range or PACT activation quantizers,
// quantized convolutions and activation-only layers.
//
// Example:
//   qat::convert(*model);
//   qat::compressed_tensors::save(*model, "out/", model_config_json,
//       qat::compressed_tensors::ExportOptions().ignore({"lm_head"}));
#pragma once

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qat::compressed_tensors {

struct ExportOptions {
  // Larger checkpoints are sharded (each shard at most this size, unless one
  // tensor alone is larger); transformers' default.
  TORCH_ARG(int64_t, max_shard_bytes) = 5'000'000'000;
  // Float layers of the served model that qat's model has no module for
  // (the lm_head of a model with tied embeddings): listed in "ignore".
  TORCH_ARG(std::vector<std::string>, ignore) = {};
};

struct ExportReport {
  std::string format; // "int-quantized", ..., or "mixed-precision"
  int64_t quantized_layers = 0;
  std::vector<std::string> files; // written, relative to the folder
  int64_t file_bytes = 0;         // all of them together
};

// Writes the converted `model` into `directory` (created if needed): its
// float parameters by module name, its quantized layers as above, and
// config.json = `model_config_json` (the model's Hugging Face config, a JSON
// object) with the quantization_config added. Throws std::invalid_argument,
// before writing anything, naming the layer for what the format cannot hold
// and for layers with a weight quantizer that were not converted. Every
// file is written to a temporary name and renamed, config.json last; shards
// of an earlier export that this one does not use are removed.
ExportReport save(
    torch::nn::Module& model,
    const std::string& directory,
    const std::string& model_config_json,
    const ExportOptions& options = {});

// Dense packing of signed b-bit codes (int32 [rows, cols], values in
// [-2^(b-1), 2^(b-1))) into int32 words [rows, ceil(cols*b/32)], as
// compressed-tensors' pack_to_int32 lays them out.
torch::Tensor pack_int32(const torch::Tensor& codes, int bits);

} // namespace qat::compressed_tensors
