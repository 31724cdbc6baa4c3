#include "trainers/models/llama.h"

#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "qat/export/atomic_file.h"

namespace qat::models {
namespace F = torch::nn::functional;

namespace {

[[noreturn]] void invalid(const std::string& field, const std::string& why) {
  throw std::invalid_argument("LlamaConfig." + field + ": " + why);
}

QuantLinear linear(int64_t in, int64_t out, bool bias = false) {
  return QuantLinear(
      torch::nn::LinearOptions(in, out).bias(bias), LayerQuantSpecs{});
}

// [x1, x2] -> [-x2, x1] over the last dimension's halves.
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const Rotary& r) {
  return x * r.cos + rotate_half(x) * r.sin;
}

// RoPE's inverse frequencies as transformers computes them, op for op in
// float32 (modeling_rope_utils.py): theta ^ -(2i / head_dim), then rescaled
// by the rope type.
torch::Tensor rope_inverse_frequencies(const LlamaConfig& c) {
  const int64_t dim = c.attention_head_dim();
  torch::Tensor inv_freq = 1.0 /
      torch::pow(c.rope_theta(),
                 torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) /
                     static_cast<double>(dim));
  const RopeScaling& r = c.rope_scaling();
  if (r.type == "linear")
    return inv_freq / r.factor;
  if (r.type != "llama3")
    return inv_freq;
  const double old_context =
      static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  const torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled =
      torch::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  const torch::Tensor smooth = (old_context / wavelen - r.low_freq_factor) /
      (r.high_freq_factor - r.low_freq_factor);
  const torch::Tensor smoothed =
      (1 - smooth) * scaled / r.factor + smooth * scaled;
  const torch::Tensor medium =
      (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(medium, smoothed, scaled);
}

} // namespace

// ---------------------------------------------------------------------------
// LlamaConfig
// ---------------------------------------------------------------------------

void LlamaConfig::validate() const {
  auto positive = [](const char* field, int64_t v) {
    if (v <= 0)
      invalid(field, "must be positive, got " + std::to_string(v));
  };
  positive("vocab_size", vocab_size_);
  positive("hidden_size", hidden_size_);
  positive("intermediate_size", intermediate_size_);
  positive("num_hidden_layers", num_hidden_layers_);
  positive("num_attention_heads", num_attention_heads_);
  positive("num_key_value_heads", num_key_value_heads_);
  positive("max_position_embeddings", max_position_embeddings_);
  if (num_attention_heads_ % num_key_value_heads_ != 0) {
    invalid(
        "num_key_value_heads",
        std::to_string(num_key_value_heads_) +
            " must divide num_attention_heads (" +
            std::to_string(num_attention_heads_) + ")");
  }
  if (head_dim_ == 0 && hidden_size_ % num_attention_heads_ != 0) {
    invalid(
        "num_attention_heads",
        std::to_string(num_attention_heads_) + " must divide hidden_size (" +
            std::to_string(hidden_size_) + ") unless head_dim is given");
  }
  if (head_dim_ < 0 || attention_head_dim() % 2 != 0) {
    invalid(
        "head_dim",
        "rotary embeddings need an even head dimension, got " +
            std::to_string(attention_head_dim()));
  }
  if (!(rope_theta_ > 0.0))
    invalid("rope_theta", "must be positive");
  if (!(rms_norm_eps_ > 0.0))
    invalid("rms_norm_eps", "must be positive");
  const RopeScaling& r = rope_scaling_;
  if (r.type != "default" && r.type != "linear" && r.type != "llama3")
    invalid("rope_scaling", "unknown rope type '" + r.type + "'");
  if (r.type != "default" && !(r.factor > 0.0))
    invalid("rope_scaling.factor", "must be positive");
  if (r.type == "llama3" &&
      (r.original_max_position_embeddings <= 0 || !(r.low_freq_factor > 0) ||
       !(r.high_freq_factor > r.low_freq_factor)))
    invalid(
        "rope_scaling",
        "llama3 needs original_max_position_embeddings > 0 and "
        "high_freq_factor > low_freq_factor > 0");
  if (sliding_window_ < 0)
    invalid("sliding_window", "must be 0 (none) or positive");
}

std::string LlamaConfig::hf_json() const {
  if (!hf_source_json_.empty()) {
    // The model's own config.json, as float32 weights now.
    auto j = nlohmann::json::parse(hf_source_json_);
    j.erase("quantization_config");
    j["torch_dtype"] = "float32";
    if (j.contains("dtype"))
      j["dtype"] = "float32";
    return j.dump(2) + "\n";
  }
  nlohmann::json rope = {
      {"rope_type", rope_scaling_.type}, {"rope_theta", rope_theta_}};
  if (rope_scaling_.type != "default")
    rope["factor"] = rope_scaling_.factor;
  if (rope_scaling_.type == "llama3") {
    rope["low_freq_factor"] = rope_scaling_.low_freq_factor;
    rope["high_freq_factor"] = rope_scaling_.high_freq_factor;
    rope["original_max_position_embeddings"] =
        rope_scaling_.original_max_position_embeddings;
  }
  const nlohmann::json j = {
      {"architectures", {architecture_}},
      {"model_type", "llama"},
      {"vocab_size", vocab_size_},
      {"hidden_size", hidden_size_},
      {"intermediate_size", intermediate_size_},
      {"num_hidden_layers", num_hidden_layers_},
      {"num_attention_heads", num_attention_heads_},
      {"num_key_value_heads", num_key_value_heads_},
      {"head_dim", attention_head_dim()},
      {"max_position_embeddings", max_position_embeddings_},
      {"rope_theta", rope_theta_},
      {"rope_parameters", rope},
      {"rms_norm_eps", rms_norm_eps_},
      {"tie_word_embeddings", tie_word_embeddings_},
      {"hidden_act", "silu"},
      {"attention_bias", qkv_bias_},
      {"mlp_bias", mlp_bias_},
      {"torch_dtype", "float32"}};
  return j.dump(2) + "\n";
}

void LlamaConfig::save_hf_json(const std::string& path) const {
  write_string_atomically(path, "Llama config", hf_json());
}

compressed_tensors::ExportReport save_llama_compressed_tensors(
    LlamaForCausalLMImpl& model,
    const std::string& directory,
    int64_t max_shard_bytes) {
  const LlamaConfig& config = model.config();
  auto options =
      compressed_tensors::ExportOptions().max_shard_bytes(max_shard_bytes);
  if (config.tie_word_embeddings()) {
    // transformers ties its lm_head to embed_tokens.weight, which a
    // compressed embedding no longer has.
    if (!model.model->embed_tokens->quantizers.weight.is_empty()) {
      throw std::invalid_argument(
          "compressed-tensors: model.embed_tokens is quantized and tied to "
          "the head; keep it float or untie the embeddings");
    }
    options.ignore({"lm_head"});
  }
  return compressed_tensors::save(model, directory, config.hf_json(), options);
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const torch::Tensor h = x.to(torch::kFloat);
  const torch::Tensor normed =
      h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c)
    : heads_(c.num_attention_heads()),
      kv_heads_(c.num_key_value_heads()),
      head_dim_(c.attention_head_dim()) {
  const int64_t hidden = c.hidden_size();
  q_proj = register_module(
      "q_proj", linear(hidden, heads_ * head_dim_, c.qkv_bias()));
  k_proj = register_module(
      "k_proj", linear(hidden, kv_heads_ * head_dim_, c.qkv_bias()));
  v_proj = register_module(
      "v_proj", linear(hidden, kv_heads_ * head_dim_, c.qkv_bias()));
  o_proj = register_module(
      "o_proj", linear(heads_ * head_dim_, hidden, c.o_proj_bias()));
  if (c.qk_norm()) {
    q_norm = register_module("q_norm", RMSNorm(head_dim_, c.rms_norm_eps()));
    k_norm = register_module("k_norm", RMSNorm(head_dim_, c.rms_norm_eps()));
  }
}

torch::Tensor LlamaAttentionImpl::forward(
    const torch::Tensor& x,
    const Rotary& rotary,
    torch::Tensor* keys,
    torch::Tensor* values) {
  const int64_t batch = x.size(0), time = x.size(1);
  // [batch, time, n * head_dim] -> [batch, n, time, head_dim]; queries and
  // keys are normalised per head first where the architecture says so.
  auto heads = [&](const torch::Tensor& t, int64_t n) {
    return t.view({batch, time, n, head_dim_});
  };
  auto normed = [](RMSNorm& norm, const torch::Tensor& h) {
    return norm.is_empty() ? h : norm(h);
  };
  const torch::Tensor q = apply_rotary(
      normed(q_norm, heads(q_proj(x), heads_)).transpose(1, 2), rotary);
  torch::Tensor k = quantize_keys(apply_rotary(
      normed(k_norm, heads(k_proj(x), kv_heads_)).transpose(1, 2), rotary));
  torch::Tensor v =
      quantize_values(heads(v_proj(x), kv_heads_).transpose(1, 2));
  const int64_t past = keys && keys->defined() ? keys->size(2) : 0;
  if (keys) {
    k = past ? torch::cat({*keys, k}, 2) : k;
    v = past ? torch::cat({*values, v}, 2) : v;
    *keys = k.detach();
    *values = v.detach();
  }
  // Causal: query i (position past + i) sees keys 0 .. past + i. Without a
  // past that is SDPA's is_causal; a single new query sees everything.
  std::optional<torch::Tensor> mask;
  if (past > 0 && time > 1) {
    const auto key_pos =
        torch::arange(past + time, x.options().dtype(torch::kLong));
    const auto query_pos =
        torch::arange(past, past + time, x.options().dtype(torch::kLong));
    mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);
  }
  const torch::Tensor attended = at::scaled_dot_product_attention(
      q,
      k,
      v,
      mask,
      /*dropout_p=*/0.0,
      /*is_causal=*/past == 0 && time > 1,
      /*scale=*/std::nullopt,
      /*enable_gqa=*/kv_heads_ != heads_);
  return o_proj(
      attended.transpose(1, 2).reshape({batch, time, heads_ * head_dim_}));
}

LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& c) {
  gate_proj = register_module(
      "gate_proj",
      linear(c.hidden_size(), c.intermediate_size(), c.mlp_bias()));
  up_proj = register_module(
      "up_proj", linear(c.hidden_size(), c.intermediate_size(), c.mlp_bias()));
  down_proj = register_module(
      "down_proj",
      linear(c.intermediate_size(), c.hidden_size(), c.mlp_bias()));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm = register_module(
      "input_layernorm", RMSNorm(c.hidden_size(), c.rms_norm_eps()));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", RMSNorm(c.hidden_size(), c.rms_norm_eps()));
}

torch::Tensor LlamaDecoderLayerImpl::forward(
    const torch::Tensor& x,
    const Rotary& rotary,
    torch::Tensor* keys,
    torch::Tensor* values) {
  const torch::Tensor h =
      x + self_attn(input_layernorm(x), rotary, keys, values);
  return h + mlp(post_attention_layernorm(h));
}

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c) : config_(c) {
  config_.validate();
  embed_tokens = register_module(
      "embed_tokens",
      QuantEmbedding(
          torch::nn::EmbeddingOptions(c.vocab_size(), c.hidden_size()),
          LayerQuantSpecs{}));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers(); ++i)
    layers->push_back(LlamaDecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.hidden_size(), c.rms_norm_eps()));
  inv_freq_ = rope_inverse_frequencies(c);
  // Initialisation as Hugging Face's LlamaPreTrainedModel: N(0, 0.02),
  // biases 0.
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (p.value().dim() == 2)
      p.value().normal_(0.0, 0.02);
    else if (
        p.key().size() > 5 &&
        p.key().compare(p.key().size() - 5, 5, ".bias") == 0)
      p.value().zero_();
  }
}

Rotary LlamaModelImpl::rotary(
    int64_t begin,
    int64_t length,
    torch::Device device) const {
  const torch::Tensor positions =
      torch::arange(begin, begin + length, torch::kLong).to(torch::kFloat);
  const torch::Tensor freqs = torch::outer(positions, inv_freq_);
  const torch::Tensor angles = torch::cat({freqs, freqs}, -1).to(device);
  return {angles.cos(), angles.sin()};
}

torch::Tensor LlamaModelImpl::forward(
    const torch::Tensor& tokens,
    KvCache* cache) {
  if (tokens.dim() != 2 || tokens.scalar_type() != torch::kLong) {
    throw std::invalid_argument(
        "LlamaModel: tokens must be int64 [batch, time]");
  }
  const int64_t past = cache ? cache->length() : 0;
  const int64_t time = tokens.size(1);
  if (config_.sliding_window() > 0 && past + time > config_.sliding_window()) {
    throw std::invalid_argument(
        "LlamaModel: positions up to " + std::to_string(past + time) +
        " exceed the sliding_window of " +
        std::to_string(config_.sliding_window()) +
        ", which this decoder does not compute");
  }
  if (past + time > config_.max_position_embeddings()) {
    throw std::invalid_argument(
        "LlamaModel: positions up to " + std::to_string(past + time) +
        " exceed max_position_embeddings = " +
        std::to_string(config_.max_position_embeddings()));
  }
  if (cache && cache->keys.empty()) {
    cache->keys.resize(layers->size());
    cache->values.resize(layers->size());
  }
  const Rotary rot = rotary(past, time, tokens.device());
  torch::Tensor h = embed_tokens(tokens);
  for (size_t i = 0; i < layers->size(); ++i) {
    h = layers->at<LlamaDecoderLayerImpl>(i).forward(
        h,
        rot,
        cache ? &cache->keys[i] : nullptr,
        cache ? &cache->values[i] : nullptr);
  }
  return norm(h);
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(LlamaConfig config)
    : config_(std::move(config)) {
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings()) {
    lm_head = register_module(
        "lm_head", linear(config_.hidden_size(), config_.vocab_size()));
    torch::NoGradGuard no_grad;
    lm_head->weight.normal_(0.0, 0.02);
  }
}

torch::Tensor LlamaForCausalLMImpl::forward(
    const torch::Tensor& tokens,
    KvCache* cache) {
  return head(model(tokens, cache));
}

torch::Tensor LlamaForCausalLMImpl::head(const torch::Tensor& hidden) {
  if (!lm_head.is_empty())
    return lm_head(hidden);
  // Tied: the embedding table as it is served (through its quantizer).
  QuantEmbeddingImpl& embed = *model->embed_tokens;
  return F::linear(hidden, embed.effective_weight(embed.weight));
}

std::vector<ScaleFoldPoint> LlamaForCausalLMImpl::scale_fold_points() {
  std::vector<ScaleFoldPoint> points;
  const auto reader = [](const std::string& name, QuantLinear& layer) {
    return std::pair<std::string, QuantLinearImpl*>(name, layer.get());
  };
  for (size_t i = 0; i < model->layers->size(); ++i) {
    auto& layer = *model->layers->ptr(i)->as<LlamaDecoderLayerImpl>();
    auto& attention = *layer.self_attn;
    auto& mlp = *layer.mlp;
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    points.push_back(
        {prefix + "input_layernorm",
         layer.input_layernorm->weight,
         {},
         {reader(prefix + "self_attn.q_proj", attention.q_proj),
          reader(prefix + "self_attn.k_proj", attention.k_proj),
          reader(prefix + "self_attn.v_proj", attention.v_proj)}});
    if (config_.num_key_value_heads() == config_.num_attention_heads()) {
      points.push_back(
          {prefix + "self_attn.v_proj",
           attention.v_proj->weight,
           attention.v_proj->bias,
           {reader(prefix + "self_attn.o_proj", attention.o_proj)}});
    }
    points.push_back(
        {prefix + "post_attention_layernorm",
         layer.post_attention_layernorm->weight,
         {},
         {reader(prefix + "mlp.gate_proj", mlp.gate_proj),
          reader(prefix + "mlp.up_proj", mlp.up_proj)}});
    points.push_back(
        {prefix + "mlp.up_proj",
         mlp.up_proj->weight,
         mlp.up_proj->bias,
         {reader(prefix + "mlp.down_proj", mlp.down_proj)}});
  }
  if (!lm_head.is_empty())
    points.push_back(
        {"model.norm", model->norm->weight, {}, {reader("lm_head", lm_head)}});
  return points;
}

torch::Tensor LlamaForCausalLMImpl::generate(
    const torch::Tensor& prompt,
    int64_t max_new_tokens,
    double temperature,
    uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  KvCache cache;
  torch::Tensor tokens = prompt;
  torch::Tensor next_input = prompt;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const torch::Tensor logits =
        forward(next_input, &cache).select(1, -1).to(torch::kFloat);
    torch::Tensor next;
    if (temperature <= 0.0) {
      next = logits.argmax(-1, /*keepdim=*/true);
    } else {
      const torch::Tensor probs =
          torch::softmax(logits / temperature, -1).cpu();
      next = at::multinomial(probs, 1, false, generator).to(logits.device());
    }
    tokens = torch::cat({tokens, next}, 1);
    next_input = next;
  }
  return tokens;
}

} // namespace qat::models
