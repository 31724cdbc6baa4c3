// Hugging Face config.json -> LlamaConfig, one entry per architecture: the
// keys every decoder shares are read once; each architecture adds only what
// differs (biases, q/k norms, a sliding window). The next architecture is one
// more row in kArchitectures.
#include "trainers/models/hf_architectures.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "trainers/models/weights.h"

namespace qat::models {
namespace {

using Json = nlohmann::json;

// Errors name the file and the key.
struct Reader {
  const std::string& path;
  const Json& j;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw std::runtime_error(path + ": '" + key + "' " + why);
  }

  bool has(const char* key) const {
    return j.contains(key) && !j[key].is_null();
  }

  template <typename T>
  void get(const char* key, T& field, bool required = false) const {
    if (!has(key)) {
      if (required)
        fail(key, "is missing");
      return;
    }
    try {
      j.at(key).get_to(field);
    } catch (const nlohmann::json::exception&) {
      fail(key, "has the wrong type: " + j[key].dump());
    }
  }

  template <typename T>
  T value(const char* key, T fallback) const {
    T out = fallback;
    get(key, out);
    return out;
  }
};

// RoPE: transformers 5 writes "rope_parameters" (with rope_theta inside),
// earlier versions "rope_theta" and "rope_scaling".
void read_rope(const Reader& r, LlamaConfig& c) {
  c.rope_theta(r.value("rope_theta", c.rope_theta()));
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key))
      continue;
    const Json& rope = r.j[key];
    if (!rope.is_object())
      r.fail(key, "must be an object, got " + rope.dump());
    const Reader sub{r.path, rope};
    RopeScaling s;
    s.type = sub.value<std::string>(
        "rope_type", sub.value<std::string>("type", "default"));
    if (s.type != "default" && s.type != "linear" && s.type != "llama3")
      r.fail(
          std::string(key) + ".rope_type",
          "'" + s.type + "' is not supported (default, linear and llama3 are)");
    if (sub.value<double>("partial_rotary_factor", 1.0) != 1.0)
      r.fail(
          std::string(key) + ".partial_rotary_factor",
          "must be 1 (partial rotary embeddings are not supported)");
    c.rope_theta(sub.value("rope_theta", c.rope_theta()));
    if (s.type != "default")
      sub.get("factor", s.factor, true);
    if (s.type == "llama3") {
      sub.get("low_freq_factor", s.low_freq_factor, true);
      sub.get("high_freq_factor", s.high_freq_factor, true);
      sub.get(
          "original_max_position_embeddings",
          s.original_max_position_embeddings,
          true);
    }
    if (s.type != "default" || c.rope_scaling().type == "default")
      c.rope_scaling(s);
  }
}

void read_common(const Reader& r, LlamaConfig& c) {
  const auto required = [&](const char* key) {
    int64_t v = 0;
    r.get(key, v, /*required=*/true);
    return v;
  };
  c.vocab_size(required("vocab_size"))
      .hidden_size(required("hidden_size"))
      .intermediate_size(required("intermediate_size"))
      .num_hidden_layers(required("num_hidden_layers"))
      .num_attention_heads(required("num_attention_heads"));
  c.num_key_value_heads(
       r.value<int64_t>("num_key_value_heads", c.num_attention_heads()))
      .head_dim(r.value<int64_t>("head_dim", 0))
      .max_position_embeddings(
          r.value("max_position_embeddings", c.max_position_embeddings()))
      .rms_norm_eps(r.value("rms_norm_eps", c.rms_norm_eps()))
      .tie_word_embeddings(
          r.value("tie_word_embeddings", c.tie_word_embeddings()));
  read_rope(r, c);
  const auto act = r.value<std::string>(
      "hidden_act", r.value<std::string>("hidden_activation", "silu"));
  if (act != "silu")
    r.fail("hidden_act", "is '" + act + "'; only silu (SwiGLU) is supported");
  for (const char* moe :
       {"num_experts", "num_local_experts", "n_routed_experts"}) {
    if (r.value<int64_t>(moe, 0) > 0)
      r.fail(moe, "asks for a mixture of experts, which is not supported");
  }
}

// Mistral, Qwen2 and Qwen3 attend within a window where they say so; this
// decoder attends to the whole context, which equals the window's result for
// contexts no longer than the window (LlamaModel refuses longer ones).
void read_sliding_window(const Reader& r, LlamaConfig& c, bool on_by_default) {
  if (!r.value<bool>("use_sliding_window", on_by_default))
    return;
  c.sliding_window(r.value<int64_t>("sliding_window", 0));
}

void llama(const Reader& r, LlamaConfig& c) {
  const bool bias = r.value<bool>("attention_bias", false);
  c.qkv_bias(bias).o_proj_bias(bias).mlp_bias(r.value<bool>("mlp_bias", false));
}

void mistral(const Reader& r, LlamaConfig& c) {
  read_sliding_window(r, c, /*on_by_default=*/true);
}

void qwen2(const Reader& r, LlamaConfig& c) {
  c.qkv_bias(true); // q/k/v always have biases, o_proj never
  read_sliding_window(r, c, /*on_by_default=*/false);
}

void qwen3(const Reader& r, LlamaConfig& c) {
  const bool bias = r.value<bool>("attention_bias", false);
  c.qkv_bias(bias).o_proj_bias(bias).qk_norm(true);
  read_sliding_window(r, c, /*on_by_default=*/false);
}

struct Architecture {
  const char* name;
  void (*read)(const Reader&, LlamaConfig&);
};

constexpr Architecture kArchitectures[] = {
    {"LlamaForCausalLM", llama},
    {"MistralForCausalLM", mistral},
    {"Qwen2ForCausalLM", qwen2},
    {"Qwen3ForCausalLM", qwen3},
};

} // namespace

std::vector<std::string> hf_architectures() {
  std::vector<std::string> out;
  for (const auto& a : kArchitectures)
    out.emplace_back(a.name);
  return out;
}

LlamaConfig LlamaConfig::from_hf_json(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error(path + ": cannot open");
  const std::string text(
      (std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Json j;
  try {
    j = Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    const std::string what = e.what();
    throw std::runtime_error(
        path + ": not valid JSON: " + what.substr(0, what.find('\n')));
  }
  if (!j.is_object())
    throw std::runtime_error(path + ": expected a JSON object");
  const Reader r{path, j};
  // Older checkpoints (and this decoder's own exports before 2026-12) may
  // lack "architectures"; model_type "llama" means Llama.
  std::string name = "LlamaForCausalLM";
  if (r.has("architectures")) {
    const Json& list = j["architectures"];
    if (!list.is_array() || list.empty() || !list[0].is_string())
      r.fail("architectures", "must be a list of names, got " + list.dump());
    name = list[0].get<std::string>();
  } else if (r.value<std::string>("model_type", "llama") != "llama") {
    r.fail(
        "model_type",
        "is '" + j["model_type"].dump() + "' and there is no 'architectures'");
  }
  const Architecture* arch = nullptr;
  for (const auto& a : kArchitectures) {
    if (name == a.name)
      arch = &a;
  }
  if (!arch) {
    std::string known;
    for (const auto& a : kArchitectures)
      known += (known.empty() ? "" : ", ") + std::string(a.name);
    r.fail(
        "architectures",
        "names " + name + ", which is not supported (supported: " + known +
            ")");
  }
  LlamaConfig c;
  c.architecture(name).hf_source_json(text);
  read_common(r, c);
  arch->read(r, c);
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return c;
}

} // namespace qat::models

namespace qat::models {

LlamaConfig hf_config(const std::string& dir) {
  namespace fs = std::filesystem;
  const auto config_path = (fs::path(dir) / "config.json").string();
  if (!fs::is_directory(dir))
    throw std::runtime_error(dir + ": not a Hugging Face checkpoint folder");
  if (!fs::exists(config_path))
    throw std::runtime_error(config_path + ": missing (the model's config)");
  return LlamaConfig::from_hf_json(config_path);
}

LlamaForCausalLM load_hf_model(const std::string& dir) {
  const LlamaConfig config = hf_config(dir);
  const WeightFiles files = WeightFiles::open(dir);
  LlamaForCausalLM lm(config);
  // Tied checkpoints may still carry lm_head.weight (a copy of the table);
  // rotary buffers are recomputed.
  load_weights(*lm, files, [&](const std::string& name) {
    return (config.tie_word_embeddings() && name == "lm_head.weight") ||
        name.find("rotary_emb.inv_freq") != std::string::npos;
  });
  return lm;
}

} // namespace qat::models
