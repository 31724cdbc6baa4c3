// A Llama-style decoder (the architecture of Llama 2/3, TinyLlama, SmolLM2)
// built from qat's layers, so that prepare() quantizes it by name:
//
//   embed_tokens -> [x + attn(rms_norm(x)); x + mlp(rms_norm(x))]* -> rms_norm
//   -> lm_head
//
// attention: rotary position embeddings (RoPE, the rotate-half convention of
// Hugging Face's Llama), grouped-query attention (num_key_value_heads <=
// num_attention_heads), causal, with an optional KV cache for generation;
// mlp: SwiGLU, down(silu(gate(x)) * up(x)).
//
// Module names are those of Hugging Face's LlamaForCausalLM, so checkpoints
// load by name (trainers/models/weights.h) and QuantConfig rules read like
// other tools' ("model.layers.*.self_attn.*", "lm_head"):
//   model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj,
//   model.layers.{i}.mlp.{gate,up,down}_proj,
//   model.layers.{i}.{input,post_attention}_layernorm, model.norm, lm_head.
// With tied embeddings there is no lm_head: the head multiplies by the
// embedding table as its quantizer (or convert()) gives it, as llama.cpp serves
// a tied GGUF model.
//
// Example:
//   qat::models::LlamaForCausalLM lm(qat::models::LlamaConfig().hidden_size(256));
//   auto logits = lm(tokens);                        // [batch, time, vocab]
//   auto text = lm->generate(prompt, /*max_new_tokens=*/64);
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "qat/calibration/scale_folding.h"
#include "qat/export/compressed_tensors.h"
#include "qat/modules/embedding.h"
#include "qat/modules/kv_cache.h"
#include "qat/modules/linear.h"

namespace qat::models {

// How RoPE's frequencies are rescaled for contexts longer than pretraining's
// (config.json's rope_scaling / rope_parameters), as transformers computes
// them: "default" (none), "linear" (every frequency / factor) or "llama3"
// (Llama 3.1's: low frequencies / factor, high ones kept, a smooth ramp
// between, by wavelength against original_max_position_embeddings).
struct RopeScaling {
  std::string type = "default";
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

// The decoder's shape and its architecture's options. One implementation
// serves Llama 2/3 (rope scaling, optional biases), Mistral (a sliding window,
// allowed only where it spans the whole context), Qwen2 (q/k/v biases) and
// Qwen3 (per-head q/k RMSNorm); trainers/models/hf_architectures.cpp reads
// each from a Hugging Face config.json.
struct LlamaConfig {
  TORCH_ARG(int64_t, vocab_size) = 256;
  TORCH_ARG(int64_t, hidden_size) = 128;
  TORCH_ARG(int64_t, intermediate_size) = 352;
  TORCH_ARG(int64_t, num_hidden_layers) = 2;
  TORCH_ARG(int64_t, num_attention_heads) = 4;
  TORCH_ARG(int64_t, num_key_value_heads) = 2;
  // 0: hidden_size / num_attention_heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  TORCH_ARG(int64_t, max_position_embeddings) = 512;
  TORCH_ARG(double, rope_theta) = 10000.0;
  TORCH_ARG(double, rms_norm_eps) = 1e-5;
  TORCH_ARG(bool, tie_word_embeddings) = true;
  // Hugging Face's architectures[0], written back on export.
  TORCH_ARG(std::string, architecture) = "LlamaForCausalLM";
  // Biases on q_proj / k_proj / v_proj (Qwen2; Llama's attention_bias), on
  // o_proj (Llama's attention_bias) and on the MLP (Llama's mlp_bias).
  TORCH_ARG(bool, qkv_bias) = false;
  TORCH_ARG(bool, o_proj_bias) = false;
  TORCH_ARG(bool, mlp_bias) = false;
  // RMSNorm over each head's queries and keys before RoPE (Qwen3):
  // self_attn.q_norm, self_attn.k_norm.
  TORCH_ARG(bool, qk_norm) = false;
  TORCH_ARG(RopeScaling, rope_scaling);
  // Keys older than this many positions are not attended to (Mistral); 0 for
  // none. This decoder attends to the whole context, so a forward longer
  // than the window is refused rather than computed differently.
  TORCH_ARG(int64_t, sliding_window) = 0;
  // The config.json the model came from, if any: exports write it back (with
  // float32 as the dtype) so that every key the model had survives.
  TORCH_ARG(std::string, hf_source_json) = "";

 public:
  int64_t attention_head_dim() const {
    return head_dim_ > 0 ? head_dim_ : hidden_size_ / num_attention_heads_;
  }
  // Throws std::invalid_argument naming the field.
  void validate() const;
  // A Hugging Face config.json (trainers/models/hf_architectures.cpp): the
  // architectures named in hf_architectures(); anything this decoder does not
  // compute (another architecture, rope type or activation, MoE) is refused
  // naming the key, not ignored.
  static LlamaConfig from_hf_json(const std::string& path);
  std::string hf_json() const;
  // Writes hf_json() atomically.
  void save_hf_json(const std::string& path) const;
};

// Keys and values of the positions seen so far, per layer:
// [batch, num_key_value_heads, length, head_dim].
struct KvCache {
  std::vector<torch::Tensor> keys, values;
  int64_t length() const {
    return keys.empty() || !keys.front().defined() ? 0 : keys.front().size(2);
  }
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  // x / sqrt(mean(x^2) + eps) * weight, the statistics in float32.
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// cos and sin of the rotary angles for the positions of one forward.
struct Rotary {
  torch::Tensor cos, sin; // [time, head_dim]
};

// Its keys (after RoPE) and values pass through the KV cache quantizers
// (qat/modules/kv_cache.h) before they are cached and attended to.
class LlamaAttentionImpl : public torch::nn::Module, public KvCacheLayer {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config);
  // x [batch, time, hidden]; appends this call's keys and values to
  // `keys` / `values` (the layer's cache slots) when given.
  torch::Tensor forward(
      const torch::Tensor& x,
      const Rotary& rotary,
      torch::Tensor* keys,
      torch::Tensor* values);
  QuantLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr},
      o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr}; // with qk_norm only

 protected:
  torch::nn::Module& attention_module() override {
    return *this;
  }

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);
  QuantLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& config);
  torch::Tensor forward(
      const torch::Tensor& x,
      const Rotary& rotary,
      torch::Tensor* keys,
      torch::Tensor* values);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  // Final hidden states [batch, time, hidden] of tokens at positions
  // [cache length, cache length + time).
  torch::Tensor forward(const torch::Tensor& tokens, KvCache* cache = nullptr);
  QuantEmbedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  Rotary rotary(int64_t begin, int64_t length, torch::Device device) const;
  LlamaConfig config_;
  torch::Tensor inv_freq_; // [head_dim / 2], not a parameter or buffer
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module, public ScaleFoldable {
 public:
  explicit LlamaForCausalLMImpl(LlamaConfig config);
  // Next-token logits [batch, time, vocab] for int64 tokens [batch, time];
  // with a cache, the tokens continue what it holds and are appended to it.
  torch::Tensor forward(const torch::Tensor& tokens, KvCache* cache = nullptr);
  // Logits from the final hidden states (what `model` returns): through
  // lm_head, or the tied embedding table as it is served.
  torch::Tensor head(const torch::Tensor& hidden);
  // Continues prompt [batch, time] by max_new_tokens tokens (greedy when
  // temperature is 0, else sampled with a generator seeded by `seed`), one
  // token a step through the KV cache; returns prompt + continuation.
  torch::Tensor generate(
      const torch::Tensor& prompt,
      int64_t max_new_tokens,
      double temperature = 0.0,
      uint64_t seed = 0);
  const LlamaConfig& config() const {
    return config_;
  }
  // Where AWQ and SmoothQuant fold scales, per layer in forward order:
  // input_layernorm -> q/k/v_proj; v_proj -> o_proj (only without grouped
  // heads: with them o_proj reads each value channel several times);
  // post_attention_layernorm -> gate/up_proj; up_proj -> down_proj (down
  // reads silu(gate) * up, linear in up's rows); and model.norm -> lm_head
  // when the head is not tied to the embedding.
  std::vector<ScaleFoldPoint> scale_fold_points() override;

  LlamaModel model{nullptr};
  QuantLinear lm_head{nullptr}; // empty with tied embeddings

 private:
  LlamaConfig config_;
};
TORCH_MODULE(LlamaForCausalLM);

// A converted decoder as a compressed-tensors checkpoint folder
// (qat/export/compressed_tensors.h) that transformers and vLLM load: the
// Hugging Face config.json with its quantization_config, the weights by
// Hugging Face name, sharded above max_shard_bytes. With tied embeddings
// transformers' lm_head is the (float) embedding table, listed in "ignore";
// a quantized tied embedding is refused.
compressed_tensors::ExportReport save_llama_compressed_tensors(
    LlamaForCausalLMImpl& model,
    const std::string& directory,
    int64_t max_shard_bytes = 5'000'000'000);

} // namespace qat::models
