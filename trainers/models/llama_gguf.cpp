#include "trainers/models/llama_gguf.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>

#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"
#include "qat/convert.h"
#include "qat/modules/layer_specs.h"
#include "trainers/models/gguf_mix.h"

namespace qat::models {
namespace {

// llama.cpp stores Q and K with the two halves of each head's rotary pairs
// interleaved (its RoPE rotates adjacent elements; ours rotates halves):
// rows [head, half, i] of ours are rows [head, i, half] of the file. This
// moves whole rows, so it applies to float rows and to rows of GGUF blocks.
torch::Tensor to_llama_cpp_rows(const torch::Tensor& rows, int64_t heads) {
  const auto n = rows.size(0);
  return rows.reshape({heads, 2, n / heads / 2, -1})
      .transpose(1, 2)
      .reshape(rows.sizes());
}
torch::Tensor from_llama_cpp_rows(const torch::Tensor& rows, int64_t heads) {
  const auto n = rows.size(0);
  return rows.reshape({heads, n / heads / 2, 2, -1})
      .transpose(1, 2)
      .reshape(rows.sizes());
}

// Heads of a permuted projection, 0 for the others.
int64_t rotary_heads(const std::string& hf_name, const LlamaConfig& c) {
  if (hf_name.find("self_attn.q_proj.") != std::string::npos)
    return c.num_attention_heads();
  if (hf_name.find("self_attn.k_proj.") != std::string::npos)
    return c.num_key_value_heads();
  return 0;
}

} // namespace

std::string gguf_tensor_name(const std::string& hf_name) {
  static const std::vector<std::pair<std::string, std::string>> layer_names = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (hf_name == "model.embed_tokens.weight")
    return "token_embd.weight";
  if (hf_name == "model.norm.weight")
    return "output_norm.weight";
  if (hf_name == "lm_head.weight")
    return "output.weight";
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(hf_name, m, layer)) {
    for (const auto& [ours, theirs] : layer_names)
      if (m[2] == ours)
        return "blk." + m[1].str() + "." + theirs;
  }
  return "";
}

QuantConfig gguf_mix_scheme(
    LlamaForCausalLMImpl& model,
    const std::string& preset) {
  const LlamaConfig& c = model.config();
  GgufModelShape shape{
      c.num_hidden_layers(),
      c.num_attention_heads(),
      c.num_key_value_heads(),
      {}};
  std::map<std::string, std::string> layer_of; // GGUF name -> our layer
  for (const auto& p : model.named_parameters()) {
    if (p.key().find("_quantizer.") != std::string::npos)
      continue;
    const auto name = gguf_tensor_name(p.key());
    if (name.empty())
      continue;
    // GGUF lists dimensions innermost first: ne[0] is the row length.
    auto sizes = p.value().sizes().vec();
    std::reverse(sizes.begin(), sizes.end());
    shape.tensors.push_back({name, sizes});
    layer_of[name] = p.key().substr(0, p.key().rfind('.'));
  }
  QuantConfig config;
  for (const auto& [name, type] : gguf_mix(preset, shape)) {
    if (type == "f32" || type == "f16")
      continue;
    config.rules.push_back(
        QuantRule::quantize(layer_of.at(name), qat::preset("gguf_" + type)));
  }
  return config;
}

LlamaConfig llama_config_from_gguf(const gguf::File& f) {
  const auto arch = f.get("general.architecture").as_string();
  if (arch != "llama") {
    throw gguf::GgufError(
        "GGUF file '" + f.path() + "': architecture '" + arch +
        "', expected llama");
  }
  const auto u = [&](const std::string& key) {
    return f.get("llama." + key).as_int();
  };
  const int64_t hidden = u("embedding_length"),
                heads = u("attention.head_count");
  auto c = LlamaConfig()
               .vocab_size(
                   f.has("llama.vocab_size")
                       ? u("vocab_size")
                       : f.info("token_embd.weight").shape.at(0))
               .hidden_size(hidden)
               .intermediate_size(u("feed_forward_length"))
               .num_hidden_layers(u("block_count"))
               .num_attention_heads(heads)
               .num_key_value_heads(
                   f.has("llama.attention.head_count_kv")
                       ? u("attention.head_count_kv")
                       : heads)
               .head_dim(hidden / heads)
               .max_position_embeddings(u("context_length"))
               .rope_theta(
                   f.has("llama.rope.freq_base")
                       ? f.get("llama.rope.freq_base").as_float()
                       : 10000.0)
               .rms_norm_eps(
                   f.get("llama.attention.layer_norm_rms_epsilon").as_float())
               .tie_word_embeddings(!f.has("output.weight"));
  if (f.has("llama.rope.scaling.type") &&
      f.get("llama.rope.scaling.type").as_string() != "none") {
    throw gguf::GgufError(
        "GGUF file '" + f.path() +
        "': rope scaling is not supported by this decoder");
  }
  c.validate();
  return c;
}

LlamaForCausalLM load_llama_gguf(const gguf::File& f) {
  const auto config = llama_config_from_gguf(f);
  LlamaForCausalLM model(config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    const auto name = gguf_tensor_name(p.key());
    if (name.empty())
      throw gguf::GgufError("no GGUF name for parameter " + p.key());
    auto value = f.dequantize(name);
    if (const int64_t heads = rotary_heads(p.key(), config))
      value = from_llama_cpp_rows(value, heads);
    if (value.sizes() != p.value().sizes()) {
      std::ostringstream s;
      s << "GGUF file '" << f.path() << "': " << name << " has shape "
        << value.sizes() << ", the model's " << p.key() << " "
        << p.value().sizes();
      throw gguf::GgufError(s.str());
    }
    p.value().copy_(value);
  }
  return model;
}

namespace {

// The GGUF type and stored blocks of a converted weight: a gguf_* spec's are
// ggml's blocks already; a microscaling one's (MXFP4) are the
// compressed-tensors codes and scale bytes convert stored, rearranged into
// ggml's blocks (kernels/ref/microscale_ref.h).
std::pair<gguf::TensorType, torch::Tensor> gguf_blocks(
    const std::string& layer,
    const QuantizedWeight& q) {
  if (const char* rule = q.spec.gguf_name()) {
    return {
        static_cast<gguf::TensorType>(kernels::find_gguf_type(rule)->ggml_id),
        q.data};
  }
  const kernels::MicroscaleFormatInfo* info = q.spec.microscale_info();
  if (!info || info->gguf_type == 0) {
    throw gguf::GgufError(
        "save_llama_gguf: " + layer + " is quantized as " + q.spec.to_string() +
        ", which GGUF cannot store" +
        (info ? std::string(" (ggml has no ") + info->name +
                 " type without a per-tensor scale)"
              : std::string()) +
        "; use a gguf_* scheme (q8_0, q4_0, q5_0, q5_1, q4_k, q5_k, q6_k) or mxfp4_a16");
  }
  const int64_t n = c10::multiply_integers(q.shape);
  auto blocks = torch::empty(
      {n / info->block_size * info->gguf_block_bytes}, torch::kByte);
  const auto values = q.data.contiguous(), scales = q.scale.contiguous();
  kernels::pack_gguf_microscale_ref(
      values.const_data_ptr<uint8_t>(),
      scales.const_data_ptr<uint8_t>(),
      n,
      info->format,
      blocks.mutable_data_ptr<uint8_t>());
  return {static_cast<gguf::TensorType>(info->gguf_type), blocks};
}

// llama.cpp rounds a layer's inputs itself (to Q8_0 blocks, for the block
// types' dot products), so a layer that trained with its inputs in a
// microscaling format would not be served as it trained.
void check_served_inputs(torch::nn::Module& model) {
  for (const auto& [name, layer] : quantized_layers(model)) {
    const FakeQuantizer& input = layer->quantizers.input;
    if (!input.is_empty() && input->fake_quant_enabled() &&
        input->options().spec().is_microscale()) {
      throw gguf::GgufError(
          "save_llama_gguf: " + name + " quantizes its inputs as " +
          input->options().spec().to_string() +
          ", which llama.cpp does not do (it rounds activations to Q8_0 "
          "itself); train a weight-only scheme such as mxfp4_a16 for a GGUF "
          "export");
    }
  }
}

} // namespace

GgufExportReport save_llama_gguf(
    LlamaForCausalLMImpl& model,
    const std::string& path,
    const std::string& name,
    const std::vector<std::pair<std::string, gguf::Value>>& tokenizer) {
  const auto& c = model.config();
  // llama.cpp's "llama" architecture has none of these; the others (qwen2,
  // qwen3, rope_freqs for llama3 scaling) are not written yet.
  if (c.qkv_bias() || c.o_proj_bias() || c.mlp_bias() || c.qk_norm() ||
      c.rope_scaling().type != "default") {
    throw std::invalid_argument(
        "GGUF export writes llama.cpp's llama architecture (no biases, q/k "
        "norms or rope scaling); " +
        c.architecture() + " with these is not supported yet");
  }
  gguf::Writer w;
  using gguf::Value;
  w.set("general.architecture", Value::of(std::string("llama")));
  w.set("general.name", Value::of(name));
  w.set("general.alignment", Value::of(uint32_t{32}));
  w.set("llama.vocab_size", Value::of(static_cast<uint32_t>(c.vocab_size())));
  w.set(
      "llama.context_length",
      Value::of(static_cast<uint32_t>(c.max_position_embeddings())));
  w.set(
      "llama.embedding_length",
      Value::of(static_cast<uint32_t>(c.hidden_size())));
  w.set(
      "llama.feed_forward_length",
      Value::of(static_cast<uint32_t>(c.intermediate_size())));
  w.set(
      "llama.block_count",
      Value::of(static_cast<uint32_t>(c.num_hidden_layers())));
  w.set(
      "llama.attention.head_count",
      Value::of(static_cast<uint32_t>(c.num_attention_heads())));
  w.set(
      "llama.attention.head_count_kv",
      Value::of(static_cast<uint32_t>(c.num_key_value_heads())));
  w.set(
      "llama.rope.dimension_count",
      Value::of(static_cast<uint32_t>(c.attention_head_dim())));
  w.set("llama.rope.freq_base", Value::of(static_cast<float>(c.rope_theta())));
  w.set(
      "llama.attention.layer_norm_rms_epsilon",
      Value::of(static_cast<float>(c.rms_norm_eps())));
  for (const auto& [key, value] : tokenizer)
    w.set(key, value);

  check_served_inputs(model);
  const auto quantized = quantized_weights(model);
  GgufExportReport report;
  for (const auto& p : model.named_parameters()) {
    if (p.key().find("_quantizer.") != std::string::npos)
      continue;
    const auto gguf_name = gguf_tensor_name(p.key());
    if (gguf_name.empty())
      throw gguf::GgufError(
          "save_llama_gguf: no GGUF name for parameter " + p.key());
    const int64_t heads = rotary_heads(p.key(), c);
    const auto shape = p.value().sizes().vec();
    report.float_bytes += p.value().numel() * 4;
    const std::string layer = p.key().substr(0, p.key().rfind('.'));
    const auto it = quantized.find(layer);
    if (it != quantized.end() && p.key().size() > 7 &&
        p.key().compare(p.key().size() - 7, 7, ".weight") == 0) {
      const auto [type, blocks] = gguf_blocks(layer, *it->second);
      auto rows = blocks.reshape({shape[0], -1});
      if (heads)
        rows = to_llama_cpp_rows(rows, heads);
      w.add_tensor(gguf_name, type, shape, rows);
      ++report.quantized_tensors;
      continue;
    }
    auto values = p.value().detach().to(torch::kCPU, torch::kFloat);
    if (heads)
      values = to_llama_cpp_rows(values, heads);
    w.add_tensor(gguf_name, gguf::TensorType::f32, shape, values);
  }
  w.write(path);
  report.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  return report;
}

GgufExportReport save_llama_gguf(
    LlamaForCausalLMImpl& model,
    const std::string& path,
    const std::string& name,
    const gguf::File* tokenizer_source) {
  std::vector<std::pair<std::string, gguf::Value>> tokenizer;
  if (tokenizer_source) {
    for (const auto& [key, value] : tokenizer_source->metadata())
      if (key.rfind("tokenizer.", 0) == 0)
        tokenizer.emplace_back(key, value);
  }
  return save_llama_gguf(model, path, name, tokenizer);
}

std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(
    const text::HfTokenizer& t) {
  using gguf::Value;
  std::vector<std::pair<std::string, Value>> out;
  out.emplace_back("tokenizer.ggml.model", Value::of(t.ggml_model()));
  out.emplace_back("tokenizer.ggml.pre", Value::of(t.ggml_pre()));
  out.emplace_back("tokenizer.ggml.tokens", Value::strings(t.tokens()));
  std::vector<int32_t> types;
  for (const auto type : t.token_types())
    types.push_back(static_cast<int32_t>(type));
  out.emplace_back("tokenizer.ggml.token_type", Value::int32s(types));
  if (!t.merges().empty())
    out.emplace_back("tokenizer.ggml.merges", Value::strings(t.merges()));
  const auto id = [&](const char* key, int32_t value) {
    if (value >= 0)
      out.emplace_back(key, Value::of(static_cast<uint32_t>(value)));
  };
  id("tokenizer.ggml.bos_token_id", t.bos_id());
  id("tokenizer.ggml.eos_token_id", t.eos_id());
  id("tokenizer.ggml.unknown_token_id", t.unk_id());
  id("tokenizer.ggml.padding_token_id", t.pad_id());
  out.emplace_back("tokenizer.ggml.add_bos_token", Value::of(t.add_bos()));
  out.emplace_back("tokenizer.ggml.add_eos_token", Value::of(t.add_eos()));
  if (!t.chat_template().empty())
    out.emplace_back("tokenizer.chat_template", Value::of(t.chat_template()));
  return out;
}

} // namespace qat::models
