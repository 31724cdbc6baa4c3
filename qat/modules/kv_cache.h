// The keys and values an attention layer's KV cache stores, fake-quantized
// for QAT that teaches a model to serve with a quantized KV cache (FP8 e4m3 in
// vLLM and compressed-tensors' kv_cache_scheme): after RoPE, before they are
// cached, one scale per tensor or per key/value head, calibrated by the
// observers and then frozen (or learned, with lsq). Straight-through
// gradients to k_proj / v_proj, as for any fake-quant.
//
// An attention module derives from KvCacheLayer and passes its keys and
// values [batch, kv_heads, time, head_dim] through quantize_keys /
// quantize_values; prepare() gives every KvCacheLayer the QuantConfig's
// kv_cache quantizer.
#pragma once

#include <torch/nn/module.h>

#include <optional>

#include "qat/fake_quant.h"

namespace qat {

class KvCacheLayer {
 public:
  virtual ~KvCacheLayer() = default;

  // Throws std::invalid_argument unless `options` can quantize a KV cache:
  // per_tensor, or per_channel along axis 1 (the heads).
  static void check_spec(const FakeQuantizerOptions& options);
  // Registers "k_cache_quantizer" and "v_cache_quantizer" (replacing any),
  // on the device of the module's parameters; nullopt removes them.
  void set_kv_cache_quantizer(
      const std::optional<FakeQuantizerOptions>& options);

  torch::Tensor quantize_keys(const torch::Tensor& keys);
  torch::Tensor quantize_values(const torch::Tensor& values);

  FakeQuantizer k_cache_quantizer{nullptr}, v_cache_quantizer{nullptr};

 protected:
  virtual torch::nn::Module& attention_module() = 0;
};

// Every KV cache layer of `model` with its name, in module order.
std::vector<std::pair<std::string, KvCacheLayer*>> kv_cache_layers(
    torch::nn::Module& model);

} // namespace qat
