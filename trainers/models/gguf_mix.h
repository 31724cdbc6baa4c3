// llama.cpp's type mixes: which GGML type `llama-quantize` gives each tensor
// of a GGUF model for the presets Q4_K_M, Q5_K_M and Q6_K, reproduced from
// llama.cpp's src/llama-quant.cpp (as vendored by llama-cpp-python 0.3.36)
// without llama.cpp. Torch-free: only the standard library.
//
// Covers the dense llama architecture family (LLAMA: Llama 2/3, Mistral,
// SmolLM, ...) quantized without an imatrix, without --pure and without
// per-tensor overrides. Other presets ("q4_0", "q3_k_m", "iq2_xs", ...) and
// mixture-of-experts tensors (*_exps, *_shexp, ffn_gate_inp, 3-D weights)
// throw std::invalid_argument.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qat::models {

// One tensor of a llama-architecture GGUF model as llama-quantize sees it:
// the name as in GGUF ("blk.3.attn_v.weight", "token_embd.weight",
// "output.weight", "output_norm.weight", ...) and the shape in GGUF order
// (ne[0], the row length, first).
struct GgufTensorShape {
  std::string name;
  std::vector<int64_t> shape;
};

// llama.block_count, llama.attention.head_count, .head_count_kv; the tensors.
struct GgufModelShape {
  int64_t n_layer = 0, n_head = 0, n_head_kv = 0;
  std::vector<GgufTensorShape> tensors;
};

// The type name llama-quantize gives each tensor for `preset` ("q4_k_m",
// "q5_k_m", "q6_k"): "q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0", "f16", or
// "f32" for the tensors llama.cpp copies unchanged (norms, 1-D tensors; they
// keep the input's type, which is F32 for an F32 input). Throws
// std::invalid_argument naming the preset for an unknown one, and naming the
// tensor for a mixture-of-experts one or a duplicate.
std::map<std::string, std::string> gguf_mix(
    const std::string& preset,
    const GgufModelShape& model);

// The presets gguf_mix knows: {"q4_k_m", "q5_k_m", "q6_k"}.
std::vector<std::string> gguf_mix_presets();

} // namespace qat::models
