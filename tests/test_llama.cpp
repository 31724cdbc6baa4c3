// The Llama-style decoder and its checkpoints: the KV cache against the full
// forward, weights saved and loaded by Hugging Face names (and refused with
// the file and tensor named when they do not fit), config errors, and the
// decoder quantized by name patterns. Its logits against transformers'
// LlamaForCausalLM are checked in tests/python/test_llama.py.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "ops/ops.h"
#include "qat/convert.h"
#include "qat/export/safetensors.h"
#include "qat/prepare.h"
#include "tests/test_helpers.h"
#include "trainers/models/llama.h"
#include "trainers/models/weights.h"

namespace qat::models {
namespace {

using qat::testing::bitwise_equal;

LlamaConfig small(bool tied = true) {
  return LlamaConfig()
      .vocab_size(96)
      .hidden_size(64)
      .intermediate_size(128)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(64)
      .tie_word_embeddings(tied);
}

std::string scratch(const std::string& name) {
  return "/tmp/qat_llama_" + std::to_string(::getpid()) + "_" + name;
}

using qat::testing::error_message;

TEST(Llama, KvCacheGivesTheFullForwardsLogits) {
  torch::manual_seed(1);
  LlamaForCausalLM lm(small());
  lm->eval();
  torch::NoGradGuard no_grad;
  const auto tokens = torch::randint(0, 96, {2, 11});
  const auto full = lm(tokens);
  EXPECT_EQ(full.sizes(), (std::vector<int64_t>{2, 11, 96}));
  KvCache cache;
  std::vector<torch::Tensor> parts{lm(tokens.narrow(1, 0, 4), &cache)};
  parts.push_back(lm(tokens.narrow(1, 4, 3), &cache)); // several at once
  for (int64_t t = 7; t < 11; ++t)
    parts.push_back(lm(tokens.narrow(1, t, 1), &cache));
  EXPECT_EQ(cache.length(), 11);
  const auto cached = torch::cat(parts, 1);
  EXPECT_TRUE(torch::allclose(cached, full, 1e-5, 1e-5))
      << (cached - full).abs().max();
  // Causal: a later token never changes an earlier position's logits.
  auto changed = tokens.clone();
  changed[0][10] = (changed[0][10].item<int64_t>() + 1) % 96;
  EXPECT_TRUE(
      bitwise_equal(lm(changed).narrow(1, 0, 10), full.narrow(1, 0, 10)));

  const auto generated = lm->generate(tokens.narrow(1, 0, 5), 6);
  EXPECT_EQ(generated.sizes(), (std::vector<int64_t>{2, 11}));
  // Greedy: each new token is the argmax of the full forward over the prefix.
  const auto again = lm(generated.narrow(1, 0, 10)).argmax(-1);
  EXPECT_TRUE(torch::equal(generated.narrow(1, 5, 6), again.narrow(1, 4, 6)));
  EXPECT_NE(
      error_message([&] {
        lm->generate(tokens, 60);
      }).find("exceed max_position_embeddings = 64"),
      std::string::npos);
}

TEST(Llama, WeightsRoundTripUnderHuggingFaceNames) {
  torch::manual_seed(2);
  LlamaForCausalLM lm(small(/*tied=*/false));
  const auto names = [&] {
    std::vector<std::string> out;
    for (const auto& [name, t] : float_weights(*lm))
      out.push_back(name);
    return out;
  }();
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names[1], "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(names.size(), 1u + 2 * 9 + 1 + 1);

  // Quantizer state is not part of the float weights.
  prepare(*lm, {{QuantRule::quantize("model.layers.*", preset("w4a8"))}});
  EXPECT_EQ(float_weights(*lm).size(), names.size());

  const std::string path = scratch("weights.safetensors");
  save_weights(*lm, path);
  torch::manual_seed(3);
  LlamaForCausalLM other(small(false));
  load_weights(*other, path);
  const auto tokens = torch::randint(0, 96, {1, 9});
  set_fake_quant(*lm, false);
  EXPECT_TRUE(bitwise_equal(other(tokens), lm(tokens)));

  // A bf16 checkpoint loads into the float32 model.
  std::vector<std::pair<std::string, torch::Tensor>> bf16;
  for (const auto& [name, t] : float_weights(*lm))
    bf16.emplace_back(name, t.detach().to(torch::kBFloat16));
  safetensors::write(path, bf16);
  load_weights(*other, path);
  EXPECT_TRUE(torch::equal(
      other->model->norm->weight,
      lm->model->norm->weight.to(torch::kBFloat16).to(torch::kFloat)));
  std::remove(path.c_str());
}

TEST(Llama, CheckpointsThatDoNotFitAreRefusedWhole) {
  torch::manual_seed(4);
  LlamaForCausalLM lm(small(false));
  const std::string path = scratch("bad.safetensors");
  auto write_without = [&](const std::string& dropped,
                           const std::string& reshaped,
                           const std::string& extra) {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [name, t] : float_weights(*lm)) {
      if (name == dropped)
        continue;
      tensors.emplace_back(
          name, name == reshaped ? torch::zeros({3, 3}) : t.detach() + 1);
    }
    if (!extra.empty())
      tensors.emplace_back(extra, torch::zeros({2}));
    safetensors::write(path, tensors);
  };
  const auto before = lm->model->norm->weight.clone();

  write_without("model.layers.1.mlp.up_proj.weight", "", "");
  const auto missing = error_message([&] { load_weights(*lm, path); });
  EXPECT_NE(missing.find(path), std::string::npos) << missing;
  EXPECT_NE(
      missing.find("missing tensors: model.layers.1.mlp.up_proj.weight"),
      std::string::npos)
      << missing;

  write_without(
      "", "model.norm.weight", "model.layers.0.self_attn.rotary_emb.inv_freq");
  const auto mismatch = error_message([&] { load_weights(*lm, path); });
  EXPECT_NE(
      mismatch.find(
          "unexpected tensors: model.layers.0.self_attn.rotary_emb.inv_freq"),
      std::string::npos)
      << mismatch;
  EXPECT_NE(
      mismatch.find("shape mismatches: model.norm.weight [3, 3] (model [64])"),
      std::string::npos)
      << mismatch;
  // Nothing was loaded from the refused files.
  EXPECT_TRUE(torch::equal(lm->model->norm->weight, before));

  // Tensors a caller chooses to ignore (old checkpoints' rotary tables).
  write_without("", "", "model.layers.0.self_attn.rotary_emb.inv_freq");
  load_weights(*lm, path, [](const std::string& name) {
    return name.find("rotary_emb.inv_freq") != std::string::npos;
  });
  EXPECT_TRUE(torch::equal(lm->model->norm->weight, before + 1));
  std::remove(path.c_str());
}

TEST(Llama, ConfigsAreCheckedAndReadFromHuggingFaceJson) {
  EXPECT_NE(
      error_message([] { small().num_key_value_heads(3).validate(); })
          .find("LlamaConfig.num_key_value_heads: 3 must divide "
                "num_attention_heads (4)"),
      std::string::npos);
  EXPECT_NE(
      error_message([] {
        small()
            .hidden_size(56)
            .num_attention_heads(8)
            .num_key_value_heads(8)
            .validate();
      }).find("rotary embeddings need an even head dimension"),
      std::string::npos);

  const std::string path = scratch("config.json");
  small(false).rope_theta(5e5).save_hf_json(path);
  const LlamaConfig back = LlamaConfig::from_hf_json(path);
  EXPECT_EQ(back.rope_theta(), 5e5);
  EXPECT_EQ(back.num_key_value_heads(), 2);
  EXPECT_FALSE(back.tie_word_embeddings());

  auto write = [&](const std::string& text) { std::ofstream(path) << text; };
  write(R"({"vocab_size": 10, "hidden_size": 8})");
  EXPECT_NE(
      error_message([&] {
        LlamaConfig::from_hf_json(path);
      }).find(path + ": missing 'intermediate_size'"),
      std::string::npos);
  write(R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})");
  EXPECT_NE(
      error_message([&] {
        LlamaConfig::from_hf_json(path);
      }).find("'rope_scaling' with rope_type 'llama3' is not supported"),
      std::string::npos);
  write(R"({"vocab_size": "ten")");
  EXPECT_NE(
      error_message([&] {
        LlamaConfig::from_hf_json(path);
      }).find(path + ": not valid JSON"),
      std::string::npos);
  std::remove(path.c_str());
}

// Quantized by Hugging Face-style name patterns; the tied head computes with
// the embedding table as its quantizer gives it, as llama.cpp serves a tied
// model; convert() keeps every bit.
TEST(Llama, QuantizesByNameAndServesWhatWasTrained) {
  torch::manual_seed(5);
  LlamaForCausalLM lm(small());
  const auto report = prepare(
      *lm,
      {{QuantRule::quantize("model.embed_tokens", preset("gguf_q8_0")),
        QuantRule::quantize("model.layers.*.self_attn.*", preset("w8a8_int8")),
        QuantRule::quantize("model.layers.*.mlp.*", preset("gguf_q4_0"))}});
  EXPECT_EQ(report.layers.size(), 1u + 2 * 7);
  const auto tokens = torch::randint(0, 96, {2, 8});
  lm->train();
  const auto loss = torch::nn::functional::cross_entropy(
      lm(tokens).reshape({-1, 96}), tokens.reshape(-1));
  loss.backward();
  EXPECT_GT(
      lm->model->layers->at<LlamaDecoderLayerImpl>(0)
          .mlp->gate_proj->weight.grad()
          .abs()
          .sum()
          .item<float>(),
      0.0f);

  lm->eval();
  torch::NoGradGuard no_grad;
  const auto hidden = lm->model(tokens);
  const auto table = lm->model->embed_tokens->weight;
  EXPECT_TRUE(bitwise_equal(
      lm(tokens),
      torch::nn::functional::linear(
          hidden, ops::fake_quant_gguf(table, "q8_0"))));
  const auto fake_quantized = lm(tokens);
  EXPECT_EQ(convert(*lm), 1 + 2 * 7);
  EXPECT_TRUE(bitwise_equal(lm(tokens), fake_quantized));
}

} // namespace
} // namespace qat::models
