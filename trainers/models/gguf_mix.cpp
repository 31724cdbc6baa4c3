// llama.cpp's type mixes for Q4_K_M, Q5_K_M and Q6_K (see gguf_mix.h). Each
// rule names the function of llama.cpp's src/llama-quant.cpp it reproduces;
// only the branches those three presets reach for a dense model without an
// imatrix are here.
#include "trainers/models/gguf_mix.h"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <utility>

namespace qat::models {
namespace {

// One preset: llama_ftype_get_default_type's type, and what
// llama_tensor_get_type_impl gives attn_v and ffn_down in the layers
// use_more_bits picks ("" = the default type there too).
struct Preset {
  const char* name;
  const char* base;
  const char* more_bits;
};
constexpr Preset kPresets[] = {
    {"q4_k_m", "q4_k", "q6_k"}, // LLAMA_FTYPE_MOSTLY_Q4_K_M = 15
    {"q5_k_m", "q5_k", "q6_k"}, // LLAMA_FTYPE_MOSTLY_Q5_K_M = 17
    {"q6_k", "q6_k", ""},       // LLAMA_FTYPE_MOSTLY_Q6_K   = 18
};

const Preset& find_preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) {
      return p;
    }
  }
  std::string known;
  for (const Preset& p : kPresets) {
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  }
  throw std::invalid_argument(
      "gguf_mix: unknown or unsupported preset '" + name +
      "' (supported: " + known + ")");
}

// ggml_blck_size: a row (ne[0]) must be a whole number of blocks.
int64_t block_size(const std::string& type) {
  if (type == "q4_k" || type == "q5_k" || type == "q6_k") {
    return 256; // QK_K
  }
  return type == "f16" || type == "f32" ? 1 : 32; // q5_0, q5_1, q8_0
}

bool contains(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

// ggml_n_dims: trailing dimensions of size 1 do not count.
size_t n_dims(const std::vector<int64_t>& shape) {
  size_t n = shape.size();
  while (n > 1 && shape[n - 1] <= 1) {
    --n;
  }
  return std::max<size_t>(n, 1);
}

// tensor_allows_quantization: 2-D (or more) tensors named "...weight", except
// these (substrings; most belong to other architectures, kept for exactness;
// the GLM5-next-only ones are left out).
// clang-format off
constexpr const char* kNeverQuantized[] = {
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight",
    "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
    "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
    "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd",
    "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd"};
// clang-format on

bool allows_quantization(const GgufTensorShape& t) {
  if (n_dims(t.shape) < 2) {
    return false;
  }
  const std::string& name = t.name;
  // llama.cpp tests `name.rfind("weight") == name.size() - 6`, which any
  // 5-character name also passes (both sides are npos): reproduced.
  const bool weight = name.size() == 5 ||
      (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0);
  if (!weight || name == "position_embd.weight" ||
      name == "token_types.weight") {
    return false;
  }
  for (const char* part : kNeverQuantized) {
    if (contains(name, part)) {
      return false;
    }
  }
  return true;
}

// tensor_get_category, reduced to what these presets tell apart. The order of
// the tests is llama.cpp's: a name is in the first category it matches.
enum class Category { token_embd, output, attn_v_like, ffn_down, other };

Category category(const std::string& name) {
  if (name == "output.weight") {
    return Category::output;
  }
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") {
    return Category::token_embd;
  }
  // attn_qkv and attn_kv_b count as attn_v (category_is_attn_v), so the
  // ATTENTION_QKV branch further down llama_tensor_get_type_impl (Q5_K for
  // Q4_K_M, Q6_K for Q5_K_M) is never reached. attn_k, attn_q, attn_output,
  // ffn_up and ffn_gate keep the default type in these presets.
  constexpr std::pair<const char*, Category> kByPart[] = {
      {"attn_qkv.weight", Category::attn_v_like},
      {"attn_kv_b.weight", Category::attn_v_like},
      {"attn_v.weight", Category::attn_v_like},
      {"attn_k.weight", Category::other},
      {"attn_q.weight", Category::other},
      {"attn_output.weight", Category::other},
      {"ffn_up", Category::other},
      {"ffn_gate", Category::other},
      {"ffn_down", Category::ffn_down},
  };
  for (const auto& [part, cat] : kByPart) {
    if (contains(name, part)) {
      return cat;
    }
  }
  return Category::other;
}

// The lambda use_more_bits in llama_tensor_get_type_impl: the first and last
// eighth of the layers and every third one between.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 ||
      (i_layer - n_layers / 8) % 3 == 2;
}

// tensor_type_fallback: a row length the type's blocks do not divide takes the
// 32-block type of about the same size; if 32 does not divide it either, F16
// (llama.cpp warns "must use F16 due to unusual shape").
std::string fallback(const std::string& type, int64_t ncols) {
  if (ncols % block_size(type) == 0) {
    return type;
  }
  const std::string smaller = type == "q4_k" ? "q5_0"
      : type == "q5_k"                       ? "q5_1"
      : type == "q6_k"                       ? "q8_0"
                                             : type; // q8_0: already 32
  return ncols % block_size(smaller) == 0 ? smaller : "f16";
}

// The layer number sscanf(name, "blk.%d.") reads, -1 without one.
long layer_of(const std::string& name) {
  if (name.compare(0, 4, "blk.") != 0) {
    return -1;
  }
  const char* start = name.c_str() + 4;
  char* end = nullptr;
  const long layer = std::strtol(start, &end, 10);
  return end == start ? -1 : layer;
}

void refuse_moe(const GgufTensorShape& t) {
  if (n_dims(t.shape) > 2 || contains(t.name, "_exps") ||
      contains(t.name, "_shexp") || contains(t.name, "ffn_gate_inp")) {
    throw std::invalid_argument(
        "gguf_mix: tensor '" + t.name +
        "' is a mixture-of-experts tensor; only dense llama models are "
        "supported");
  }
}

} // namespace

std::vector<std::string> gguf_mix_presets() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) {
    names.emplace_back(p.name);
  }
  return names;
}

std::map<std::string, std::string> gguf_mix(
    const std::string& preset,
    const GgufModelShape& model) {
  const Preset& p = find_preset(preset);
  if (model.n_layer <= 0) {
    throw std::invalid_argument("gguf_mix: n_layer must be positive");
  }
  std::set<std::string> names;
  for (const GgufTensorShape& t : model.tensors) {
    refuse_moe(t);
    if (!names.insert(t.name).second) {
      throw std::invalid_argument(
          "gguf_mix: tensor '" + t.name + "' appears twice");
    }
  }

  // llama_model_loader::weights_map's order (weight_name_comparer): by layer
  // (-1 outside the blocks), then by name. The attn_v and ffn_down counters
  // below count in this order.
  std::vector<const GgufTensorShape*> order;
  for (const GgufTensorShape& t : model.tensors) {
    order.push_back(&t);
  }
  std::sort(
      order.begin(),
      order.end(),
      [](const GgufTensorShape* a, const GgufTensorShape* b) {
        const long la = layer_of(a->name), lb = layer_of(b->name);
        return la != lb ? la < lb : a->name < b->name;
      });

  // init_quantize_state_counters: n_attention_wv counts every attn_v-like
  // name, n_ffn_down is the block count; the embeddings are tied when there is
  // no output.weight.
  int n_attention_wv = 0;
  bool tied = true;
  for (const GgufTensorShape* t : order) {
    const Category c = category(t->name);
    n_attention_wv += c == Category::attn_v_like;
    tied = tied && c != Category::output;
  }
  const int n_ffn_down = static_cast<int>(model.n_layer);
  // llama_model_llama::load_arch_hparams: 80 layers with fewer KV heads than
  // heads is LLM_TYPE_70B, whose attn_v gets Q5_K instead of Q4_K.
  const bool is_70b = model.n_layer == 80 && model.n_head != model.n_head_kv;
  int i_attention_wv = 0, i_ffn_down = 0;

  std::map<std::string, std::string> types;
  for (const GgufTensorShape* t : order) {
    // llama_tensor_get_type: what tensor_allows_quantization refuses is copied.
    if (!allows_quantization(*t)) {
      types[t->name] = "f32";
      continue;
    }
    const int64_t ncols = t->shape[0];
    std::string type = p.base;
    // llama_tensor_get_type_impl, the branches these presets take.
    switch (category(t->name)) {
      case Category::output:
      case Category::token_embd:
        // The output tensor, and the token embedding when it is also the
        // output (tied): Q6_K, or Q8_0 when the rows are not whole Q6_K blocks.
        if (t->name == "output.weight" || tied) {
          type = ncols % block_size(p.base) != 0 ? "q8_0" : "q6_k";
        }
        break;
      case Category::attn_v_like:
        if (*p.more_bits && use_more_bits(i_attention_wv, n_attention_wv)) {
          type = p.more_bits;
        }
        if (is_70b && type == "q4_k") {
          type = "q5_k";
        }
        ++i_attention_wv;
        break;
      case Category::ffn_down:
        // Dense model (n_expert <= 1): the layer is the counter, not the name.
        if (*p.more_bits && use_more_bits(i_ffn_down, n_ffn_down)) {
          type = p.more_bits;
        }
        ++i_ffn_down;
        break;
      case Category::other:
        break;
    }
    types[t->name] = fallback(type, ncols);
  }
  return types;
}

} // namespace qat::models
