// The Llama-style decoder and its checkpoints: the KV cache against the full
// forward, weights saved and loaded by Hugging Face names (and refused with
// the file and tensor named when they do not fit), config errors, and the
// decoder quantized by name patterns. Its logits against transformers'
// LlamaForCausalLM are checked in tests/python/test_llama.py; its
// compressed-tensors export's layout and refusals here, its contents against
// compressed-tensors and transformers in tests/python/test_compressed_tensors.py.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ops/ops.h"
#include "qat/convert.h"
#include "qat/export/compressed_tensors.h"
#include "qat/export/gguf.h"
#include "qat/export/safetensors.h"
#include "qat/prepare.h"
#include "tests/test_helpers.h"
#include "trainers/models/llama.h"
#include "trainers/models/llama_gguf.h"
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

// FP8 KV cache: keys (after RoPE) and values are fake-quantized before they
// are cached, with scales the observers calibrate (amax / 448 of what they
// saw), one per tensor or per head; the cache then holds values of the FP8
// grid, and decoding with it still gives the full forward's logits.
TEST(Llama, KvCacheQuantizersCalibrateAndQuantizeWhatIsCached) {
  for (bool per_head : {false, true}) {
    torch::manual_seed(2);
    LlamaForCausalLM lm(small());
    lm->eval();
    auto spec = QuantSpec().format(NumberFormat::fp8_e4m3);
    if (per_head)
      spec.granularity(Granularity::per_channel).axis(1);
    QuantConfig config;
    config.kv_cache = FakeQuantizerOptions(spec);
    const auto report = prepare(*lm, config);
    EXPECT_NE(
        report.table().find("model.layers.1.self_attn (keys, values)"),
        std::string::npos)
        << report.table();
    const auto tokens = torch::randint(0, 96, {2, 11});
    torch::NoGradGuard no_grad;
    const auto float_logits = lm(tokens);
    calibrate(*lm, [&] { lm(tokens); });
    auto& attention =
        *lm->model->layers[0]->as<LlamaDecoderLayerImpl>()->self_attn;
    const auto k_scale = attention.k_cache_quantizer->scale();
    EXPECT_EQ(k_scale.numel(), per_head ? 2 : 1);
    EXPECT_TRUE((k_scale > 0).all().item<bool>());
    KvCache cache;
    std::vector<torch::Tensor> parts{lm(tokens.narrow(1, 0, 6), &cache)};
    for (int64_t t = 6; t < 11; ++t)
      parts.push_back(lm(tokens.narrow(1, t, 1), &cache));
    const auto full = lm(tokens);
    EXPECT_FALSE(torch::allclose(full, float_logits, 1e-4, 1e-4));
    EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-5, 1e-5));
    // Cached keys are codes times their scale: quantizing again is exact.
    const auto keys = cache.keys.front();
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_fp8(
            keys,
            k_scale,
            per_head ? std::optional<int64_t>(1) : std::nullopt,
            0,
            "e4m3fn"),
        keys));
  }
  // Only per tensor or per head, and only where there is attention.
  LlamaForCausalLM lm(small());
  QuantConfig per_token;
  per_token.kv_cache = FakeQuantizerOptions(
      QuantSpec().granularity(Granularity::per_token).dynamic(true));
  EXPECT_NE(
      error_message([&] {
        prepare(*lm, per_token);
      }).find("KV cache scales are per_tensor or per_channel along axis 1"),
      std::string::npos);
  torch::nn::Sequential mlp(
      QuantLinear(torch::nn::LinearOptions(4, 4), LayerQuantSpecs{}));
  QuantConfig fp8;
  fp8.kv_cache =
      FakeQuantizerOptions(QuantSpec().format(NumberFormat::fp8_e4m3));
  EXPECT_NE(
      error_message([&] {
        prepare(*mlp, fp8);
      }).find("no attention layer with a KV cache"),
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
      mismatch.find("mismatches: model.norm.weight [3, 3] (model [64])"),
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
      }).find(path + ": 'intermediate_size' is missing"),
      std::string::npos);
  write(R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})");
  EXPECT_NE(
      error_message([&] {
        LlamaConfig::from_hf_json(path);
      }).find("'low_freq_factor' is missing"),
      std::string::npos);
  write(R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})");
  EXPECT_NE(
      error_message([&] {
        LlamaConfig::from_hf_json(path);
      }).find("'rope_scaling.rope_type' 'dynamic' is not supported"),
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

// The format's packing, stated as a bit stream: bit k of a row's stream
// (its words in order, each least significant bit first) is bit k % b of
// element k / b's unsigned code, in groups of 32 elements, the last group
// cut to ceil(cols * b / 32) words.
TEST(CompressedTensors, PacksCodesAsADenseBitStream) {
  for (int bits : {2, 3, 4, 5, 8}) {
    for (int64_t cols : {1, 7, 32, 33, 70}) {
      const int64_t half = int64_t{1} << (bits - 1);
      const auto codes = torch::randint(-half, half, {3, cols}, torch::kInt);
      const auto packed = compressed_tensors::pack_int32(codes, bits);
      const int64_t words = (cols * bits + 31) / 32;
      ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{3, words}));
      for (int64_t r = 0; r < 3; ++r) {
        for (int64_t k = 0; k < words * 32; ++k) {
          const auto word =
              static_cast<uint32_t>(packed[r][k / 32].item<int>());
          const int64_t element = k / bits;
          const int64_t expected = element < cols
              ? ((codes[r][element].item<int>() + half) >> (k % bits)) & 1
              : 0;
          ASSERT_EQ((word >> (k % 32)) & 1u, expected)
              << bits << " bits, " << cols << " columns, row " << r << " bit "
              << k;
        }
      }
    }
  }
  EXPECT_TRUE(qat::testing::throws_with<c10::Error>(
      [] {
        compressed_tensors::pack_int32(torch::full({1, 2}, 8, torch::kInt), 4);
      },
      "does not fit 4 signed bits"));
}

TEST(CompressedTensors, ShardsWithAnIndexAndRemovesStaleShards) {
  qat::testing::TempDir dir;
  torch::manual_seed(3);
  LlamaForCausalLM lm(small(/*tied=*/false));
  prepare(
      *lm,
      {{QuantRule::skip("lm_head"),
        QuantRule::quantize("*mlp*", preset("w8a8_int8"), "Linear"),
        QuantRule::quantize("*", preset("fp8_e4m3"), "Linear")}});
  convert(*lm);
  const auto report =
      save_llama_compressed_tensors(*lm, dir.path().string(), 20'000);
  EXPECT_EQ(report.format, "mixed-precision");
  EXPECT_EQ(report.quantized_layers, 2 * 7);
  ASSERT_GT(report.files.size(), 3u);

  std::ifstream index_file(dir / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(index_file);
  std::set<std::string> in_shards;
  int64_t total = 0;
  for (const auto& file : report.files) {
    if (file.rfind("model-", 0) != 0)
      continue;
    const auto shard = safetensors::File::read(dir / file);
    int64_t bytes = 0;
    for (const auto& name : shard.names()) {
      const auto& info = shard.info(name);
      bytes += static_cast<int64_t>(info.end - info.begin);
      EXPECT_EQ(index["weight_map"][name], file) << name;
      in_shards.insert(name);
    }
    // Over the limit only when a single tensor is.
    EXPECT_TRUE(bytes <= 20'000 || shard.names().size() == 1) << file;
    total += bytes;
  }
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(in_shards.size(), index["weight_map"].size());
  for (const char* name :
       {"lm_head.weight",
        "model.norm.weight",
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.weight_scale",
        "model.layers.1.mlp.down_proj.weight"})
    EXPECT_TRUE(in_shards.count(name)) << name;
  for (const auto& name : in_shards)
    EXPECT_EQ(name.find("quantizer"), std::string::npos) << name;

  std::ifstream config_file(dir / "config.json");
  const auto config = nlohmann::json::parse(config_file);
  EXPECT_EQ(config["model_type"], "llama");
  const auto& q = config["quantization_config"];
  EXPECT_EQ(q["quant_method"], "compressed-tensors");
  EXPECT_EQ(q["ignore"], nlohmann::json({"lm_head"}));
  EXPECT_EQ(q["config_groups"].size(), 2u);

  // One file now: the shards and the index of the first export are gone.
  const auto again = save_llama_compressed_tensors(*lm, dir.path().string());
  EXPECT_EQ(
      again.files,
      (std::vector<std::string>{"model.safetensors", "config.json"}));
  int64_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    files += entry.is_regular_file();
  EXPECT_EQ(files, 2);
}

// MXFP4 weights go to GGUF as ggml's MXFP4 blocks holding the same codes and
// scales: qat's reader gives back what the converted model serves (gguf-py
// and llama.cpp check the same files in python.gguf_files_conformance and
// python.llama_cpp_conformance). What llama.cpp cannot serve as trained is
// refused by name.
TEST(Gguf, StoresMxfp4WeightsAndRefusesWhatLlamaCppCannotServe) {
  qat::testing::TempDir dir;
  const std::string path = (dir.path() / "model.gguf").string();
  const auto prepared = [](const std::string& preset_name) {
    torch::manual_seed(5);
    LlamaForCausalLM lm(small(true));
    prepare(*lm, {{QuantRule::quantize("*", preset(preset_name), "Linear")}});
    convert(*lm);
    return lm;
  };
  auto lm = prepared("mxfp4_a16");
  const auto report = qat::models::save_llama_gguf(*lm, path, "t");
  EXPECT_EQ(report.quantized_tensors, 14);
  const auto file = qat::gguf::File::read(path);
  EXPECT_EQ(
      file.info("blk.1.ffn_down.weight").type, qat::gguf::TensorType::mxfp4);
  const auto quantized = quantized_weights(*lm);
  const QuantizedWeight& down = *quantized.at("model.layers.1.mlp.down_proj");
  // ggml reads the e2m1 code of -0 as 0: + 0 makes every zero +0.
  EXPECT_TRUE(torch::equal(
      file.dequantize("blk.1.ffn_down.weight") + 0.0,
      down.dequantize().view({64, 128}) + 0.0));
  // The Q/K rows are reordered for llama.cpp's RoPE, the blocks with them.
  const auto served = qat::models::load_llama_gguf(file);
  const QuantizedWeight& q_proj =
      *quantized.at("model.layers.0.self_attn.q_proj");
  EXPECT_TRUE(torch::equal(
      served->named_parameters()["model.layers.0.self_attn.q_proj.weight"] +
          0.0,
      q_proj.dequantize().view({64, 64}) + 0.0));

  const auto refused = [&](const std::string& preset_name) {
    auto model = prepared(preset_name);
    return error_message(
        [&] { qat::models::save_llama_gguf(*model, path, "t"); });
  };
  const std::string nvfp4 = refused("nvfp4_a16");
  EXPECT_NE(nvfp4.find("model.layers.0.self_attn.q_proj"), std::string::npos)
      << nvfp4;
  EXPECT_NE(
      nvfp4.find("which GGUF cannot store (ggml has no nvfp4 type"),
      std::string::npos)
      << nvfp4;
  const std::string w4a4 = refused("mxfp4");
  EXPECT_NE(w4a4.find("quantizes its inputs as"), std::string::npos) << w4a4;
  EXPECT_NE(w4a4.find("mxfp4_a16"), std::string::npos) << w4a4;
}

TEST(CompressedTensors, RefusesWhatTheFormatCannotHoldByName) {
  qat::testing::TempDir dir;
  const auto attempt =
      [&](bool tied, const QuantConfig& scheme, bool do_convert = true) {
        torch::manual_seed(4);
        LlamaForCausalLM lm(small(tied));
        prepare(*lm, scheme);
        if (do_convert)
          convert(*lm);
        return error_message(
            [&] { save_llama_compressed_tensors(*lm, dir.path().string()); });
      };
  const auto linear = [](const std::string& preset_name) {
    return QuantConfig{
        {QuantRule::quantize("*", preset(preset_name), "Linear")}};
  };
  const std::string gguf = attempt(true, linear("gguf_q4_0"));
  EXPECT_NE(
      gguf.find("layer 'model.layers.0.self_attn.q_proj': weight "),
      std::string::npos)
      << gguf;
  EXPECT_NE(gguf.find("exported as GGUF (--format gguf)"), std::string::npos)
      << gguf;
  EXPECT_NE(
      attempt(true, linear("w8a8_int8"), false)
          .find("was not converted; call convert()"),
      std::string::npos);
  auto e5m2 = preset("fp8_e4m3");
  e5m2.weight->spec().format(NumberFormat::fp8_e5m2);
  EXPECT_NE(
      attempt(true, {{QuantRule::quantize("*", e5m2, "Linear")}})
          .find("stores FP8 as e4m3 only"),
      std::string::npos);
  LayerQuantSpecs channel_inputs = preset("w8a8_int8");
  channel_inputs.input = FakeQuantizerOptions(
      QuantSpec().granularity(Granularity::per_channel).axis(-1));
  EXPECT_NE(
      attempt(true, {{QuantRule::quantize("*", channel_inputs, "Linear")}})
          .find("input_activations int8"),
      std::string::npos);
  const LayerQuantSpecs int8_table{
      QuantSpec().granularity(Granularity::per_channel), {}, {}};
  EXPECT_NE(
      attempt(true, {{QuantRule::quantize("model.embed_tokens", int8_table)}})
          .find("model.embed_tokens is quantized and tied"),
      std::string::npos);
  EXPECT_NE(
      attempt(true, {}).find("no quantized layer to export"),
      std::string::npos);
  QuantConfig int8_cache;
  int8_cache.kv_cache = FakeQuantizerOptions(QuantSpec());
  EXPECT_NE(
      attempt(true, int8_cache, false)
          .find("compressed-tensors and vLLM store an FP8 e4m3 KV cache"),
      std::string::npos);
  // Nothing was written by any of them.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

} // namespace
} // namespace qat::models
