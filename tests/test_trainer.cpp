// The trainer's promises: quantization schemes from YAML with errors at their
// place, checkpoints that round-trip and detect corruption, resuming that
// ends with the weights of an uninterrupted run, a fallback past a corrupt
// checkpoint, and a NaN loss that stops the run with its last checkpoint
// intact. Jobs run the shipped digits recipe (an MLP, about a second).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "qat/export/gguf.h"
#include "qat/fake_quant.h"
#include "qat/modules/conv.h"
#include "tests/test_helpers.h"
#include "trainers/checkpoint.h"
#include "trainers/distributed.h"
#include "trainers/mixed_precision.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/quant_config.h"
#include "trainers/trainer.h"

namespace qat::train {
namespace {
namespace fs = std::filesystem;
using recipe::Recipe;
using recipe::RecipeError;

const std::string kRecipes = std::string(QAT_SOURCE_DIR) + "/recipes";

// ---------------------------------------------------------------------------
// Quantization schemes

class QuantSchemeTest : public ::testing::Test {
 protected:
  std::string write(const std::string& scheme) {
    const auto path = temp_ / "recipe.yaml";
    std::ofstream(path) << "quant:\n  s:\n" << scheme;
    return path;
  }
  std::string error_of(const std::string& scheme) {
    return testing::error_message<RecipeError>(
        [&] { recipe::quant_config(Recipe::load(write(scheme)), "quant.s"); });
  }
  testing::TempDir temp_;
};

TEST_F(QuantSchemeTest, RulesBecomeTheSpecsTheyDescribe) {
  const auto config = recipe::quant_config(
      Recipe::load(write(
          "    rules:\n"
          "      - match: head\n"
          "        preset: w8a8_int8\n"
          "        input: none\n"
          "      - match: \"*\"\n"
          "        type: Conv2d|Linear\n"
          "        weight: {bits: 4, granularity: per_group, axis: -1,"
          " group_size: 32, estimator: lsq}\n"
          "        input: {format: fp8_e4m3, observer: percentile, percentile: 99.9}\n"
          "      - match: \"re:act.*\"\n"
          "        skip: true\n")),
      "quant.s");
  ASSERT_EQ(config.rules.size(), 3u);
  const auto head = preset("w8a8_int8");
  EXPECT_EQ(config.rules[0].specs->weight->spec(), head.weight->spec());
  EXPECT_FALSE(config.rules[0].specs->input.has_value());
  const auto& w = *config.rules[1].specs->weight;
  EXPECT_EQ(
      w.spec(),
      QuantSpec()
          .bits(4)
          .granularity(Granularity::per_group)
          .axis(-1)
          .group_size(32));
  EXPECT_EQ(w.estimator(), Estimator::lsq);
  EXPECT_EQ(config.rules[1].layer_type, "Conv2d|Linear");
  const auto& in = *config.rules[1].specs->input;
  EXPECT_EQ(in.spec().format(), NumberFormat::fp8_e4m3);
  EXPECT_EQ(in.observer().kind(), ObserverKind::percentile);
  EXPECT_DOUBLE_EQ(in.observer().percentile(), 99.9);
  EXPECT_FALSE(config.rules[2].specs.has_value());
  EXPECT_EQ(config.rules[2].pattern, "re:act.*");
}

TEST_F(QuantSchemeTest, FormatsAndTheKvCacheParse) {
  const auto config = recipe::quant_config(
      Recipe::load(write("    kv_cache: {granularity: per_channel, axis: 1}\n"
                         "    rules:\n"
                         "      - match: \"*\"\n"
                         "        weight: {format: nvfp4}\n"
                         "        input: {format: nvfp4, dynamic: false}\n")),
      "quant.s");
  ASSERT_TRUE(config.kv_cache.has_value());
  EXPECT_EQ(
      config.kv_cache->spec(),
      QuantSpec()
          .format(NumberFormat::fp8_e4m3)
          .granularity(Granularity::per_channel)
          .axis(1));
  EXPECT_EQ(
      config.rules[0].specs->weight->spec(),
      QuantSpec::microscale(NumberFormat::nvfp4));
  EXPECT_EQ(
      config.rules[0].specs->input->spec(),
      QuantSpec::microscale(NumberFormat::nvfp4).dynamic(false));
  // A scheme may quantize the KV cache alone.
  EXPECT_TRUE(
      recipe::quant_config(Recipe::load(write("    kv_cache: {}\n")), "quant.s")
          .rules.empty());
  const auto file = (temp_ / "recipe.yaml");
  EXPECT_EQ(
      error_of("    kv_cache: {granularity: per_token, dynamic: true}\n"),
      file +
          ":3:15: quant.s.kv_cache: kv_cache fp8_e4m3 per_token dynamic: KV "
          "cache scales are per_tensor or per_channel along axis 1 (one per "
          "key/value head)");
  EXPECT_NE(
      error_of("    rules:\n      - match: fc\n        weight: {format: mxfp4, "
               "dynamic: false}\n")
          .find("mxfp4 has only power-of-two block scales"),
      std::string::npos);
}

TEST_F(QuantSchemeTest, TheGgufMixEstimatorIsChecked) {
  const auto load = [&](const std::string& body) {
    return Recipe::load(write(body));
  };
  EXPECT_EQ(
      recipe::gguf_mix_estimator(
          load("    gguf_mix: q4_k_m\n    gguf_mix_estimator: lsq\n"),
          "quant.s"),
      Estimator::lsq);
  EXPECT_EQ(
      recipe::gguf_mix_estimator(load("    gguf_mix: q4_k_m\n"), "quant.s"),
      Estimator::ste);
  const auto file = (temp_ / "recipe.yaml");
  EXPECT_EQ(
      error_of("    gguf_mix: q4_k_m\n    gguf_mix_estimator: pact\n"),
      file +
          ":4:25: quant.s.gguf_mix_estimator: unknown value 'pact'; "
          "expected one of ste, lsq");
  EXPECT_EQ(
      error_of("    gguf_mix_estimator: lsq\n    rules:\n      - match: fc\n"
               "        preset: gguf_q4_k\n"),
      file +
          ":3:25: quant.s.gguf_mix_estimator: gguf_mix_estimator needs a "
          "gguf_mix");
}

TEST_F(QuantSchemeTest, ErrorsNameFileLineAndKey) {
  const auto file = (temp_ / "recipe.yaml");
  EXPECT_EQ(
      error_of("    rules:\n      - match: fc\n        weight: {bitz: 4}\n"),
      file +
          ":5:24: quant.s.rules.0.weight.bitz: unknown key (did you mean "
          "'quant.s.rules.0.weight.bits'?)");
  EXPECT_EQ(
      error_of(
          "    rules:\n      - match: fc\n        weight: {granularity: per_chanel}\n"),
      file +
          ":5:31: quant.s.rules.0.weight.granularity: unknown value 'per_chanel' (did "
          "you mean 'per_channel'?); expected one of per_tensor, per_channel, "
          "per_group, per_token");
  EXPECT_EQ(
      error_of("    rules:\n      - match: fc\n        weight: {bits: four}\n"),
      file + ":5:24: quant.s.rules.0.weight.bits: expected an int, got string");
  EXPECT_EQ(
      error_of("    rules:\n      - match: fc\n        preset: w8a8_int9\n"),
      file +
          ":5:17: quant.s.rules.0.preset: unknown preset 'w8a8_int9' (did you mean "
          "'w8a8_int8'?)");
  EXPECT_TRUE(testing::throws_with<RecipeError>(
      [&] {
        recipe::quant_config(
            Recipe::load(write(
                "    rules:\n      - match: fc\n        weight: {bits: 12}\n")),
            "quant.s");
      },
      file + ":5:24: quant.s.rules.0.weight.bits: must be in [2, 8], got 12"));
  EXPECT_EQ(
      error_of("    rules: []\n"),
      file + ":3:12: quant.s.rules: a scheme needs at least one rule");
  EXPECT_EQ(
      testing::error_message<RecipeError>([&] {
        recipe::quant_config(Recipe::load(write("    rules: []\n")), "quant.t");
      }),
      file +
          ":2:3: quant.t: no such quantization scheme (did you mean 'quant.s'?)");
}

// ---------------------------------------------------------------------------
// Checkpoints

TEST(CheckpointTest, RoundTripsModelOptimizerAndGenerator) {
  testing::TempDir temp;
  torch::manual_seed(3);
  models::Mlp model(
      models::MlpOptions().in_features(12).hidden({8}).classes(3));
  torch::optim::SGD optimizer(
      model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const auto step = [&] {
    optimizer.zero_grad();
    model(torch::randn({5, 12})).square().sum().backward();
    optimizer.step();
  };
  step();
  step();
  Checkpoints checkpoints(temp / "ck", 2);
  const auto path = checkpoints.save(*model, &optimizer, 2, "a: 1");
  const auto expected_next = torch::randn({4});

  // A fresh model and optimizer, restored, continue exactly as the original.
  models::Mlp copy(models::MlpOptions().in_features(12).hidden({8}).classes(3));
  torch::optim::SGD copy_optimizer(
      copy->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const auto found =
      checkpoints.latest([](const std::string& w) { FAIL() << w; });
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->path, path);
  EXPECT_EQ(found->step, 2);
  EXPECT_EQ(found->config, "a: 1");
  found->restore(*copy, &copy_optimizer);
  EXPECT_TRUE(testing::bitwise_equal(torch::randn({4}), expected_next));
  for (const auto& p : copy->named_parameters())
    EXPECT_TRUE(
        testing::bitwise_equal(p.value(), model->named_parameters()[p.key()]));
  // Momentum buffers came back: one more identical step keeps them equal.
  torch::manual_seed(9);
  const auto x = torch::randn({5, 12});
  for (auto* pair : {&optimizer, &copy_optimizer}) {
    pair->zero_grad();
  }
  model(x).square().sum().backward();
  optimizer.step();
  copy(x).square().sum().backward();
  copy_optimizer.step();
  for (const auto& p : copy->named_parameters())
    EXPECT_TRUE(
        testing::bitwise_equal(p.value(), model->named_parameters()[p.key()]));
}

TEST(CheckpointTest, KeepsTheNewestAndSkipsCorruptOnesWithAWarning) {
  testing::TempDir temp;
  models::Mlp model(models::MlpOptions().in_features(4).hidden({4}).classes(2));
  Checkpoints checkpoints(temp / "ck", 2);
  checkpoints.save(*model, nullptr, 10, "");
  // What a writer killed during its write leaves: ignored, then removed.
  std::ofstream(temp / "ck/step-000000020.safetensors.tmp.4242") << "half";
  EXPECT_EQ(checkpoints.latest([](const std::string&) {})->step, 10);
  for (int64_t step : {20, 30})
    checkpoints.save(*model, nullptr, step, "");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(temp.path() / "ck"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(
      names,
      (std::vector<std::string>{
          "step-000000020.safetensors", "step-000000030.safetensors"}));

  // One flipped byte in the data section: the checksum catches it.
  const auto newest = temp / "ck/step-000000030.safetensors";
  {
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    const char c = static_cast<char>(f.get());
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(c ^ 0x10));
  }
  EXPECT_TRUE(testing::throws_with<CheckpointError>(
      [&] { read_checkpoint(newest); },
      "checkpoint " + newest + ": checksum mismatch"));
  std::vector<std::string> warnings;
  auto found =
      checkpoints.latest([&](const std::string& w) { warnings.push_back(w); });
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->step, 20);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("checksum mismatch"), std::string::npos)
      << warnings[0];

  // A truncated file and a file that is not a checkpoint.
  fs::resize_file(temp / "ck/step-000000020.safetensors", 100);
  std::ofstream(temp / "ck/step-000000040.safetensors") << "not a checkpoint";
  warnings.clear();
  EXPECT_FALSE(
      checkpoints.latest([&](const std::string& w) { warnings.push_back(w); }));
  EXPECT_EQ(warnings.size(), 3u);
  EXPECT_TRUE(testing::throws_with<CheckpointError>(
      [&] { read_checkpoint(temp / "ck/step-000000020.safetensors"); },
      "checkpoint " + (temp / "ck/step-000000020.safetensors") + ": "));
}

TEST(CheckpointTest, AMismatchedModelIsRefusedBeforeAnythingChanges) {
  models::Mlp a(models::MlpOptions().in_features(4).hidden({4}).classes(2));
  models::Mlp b(models::MlpOptions().in_features(4).hidden({5}).classes(2));
  const auto before = b->named_parameters()["head.weight"].clone();
  EXPECT_EQ(
      testing::error_message<CheckpointError>(
          [&] { load_module_state(*b, module_state(*a), "a.safetensors"); }),
      "a.safetensors: does not match the model:\n"
      "  shape of fc0.bias: model [5], file [4]\n"
      "  shape of fc0.weight: model [5, 4], file [4, 4]\n"
      "  shape of head.weight: model [2, 5], file [2, 4]");
  EXPECT_TRUE(
      testing::bitwise_equal(b->named_parameters()["head.weight"], before));
}

// ---------------------------------------------------------------------------
// Jobs: resume, corrupt fallback, NaN stop

class JobTest : public ::testing::Test {
 protected:
  Recipe digits(
      const std::string& run,
      std::vector<std::string> overrides = {}) {
    overrides.push_back("run.dir=" + (temp_ / run));
    overrides.push_back("trainer.qat.schemes=[w4a4]");
    return Recipe::load(kRecipes + "/digits.yaml", overrides);
  }
  static std::vector<ModelResult> run(
      const Recipe& r,
      JobOptions options = {},
      const std::vector<std::string>& stages = {"float", "qat"}) {
    Job job(r, std::move(options));
    return job.run(stages);
  }
  Checkpoint final_of(const std::string& run, const std::string& stage) {
    return read_checkpoint(
        temp_ / (run + "/checkpoints/" + stage + "/final.safetensors"));
  }
  static ::testing::AssertionResult same_weights(
      const Checkpoint& a,
      const Checkpoint& b) {
    if (a.model.size() != b.model.size())
      return ::testing::AssertionFailure() << "different tensor counts";
    for (size_t i = 0; i < a.model.size(); ++i) {
      if (a.model[i].first != b.model[i].first)
        return ::testing::AssertionFailure()
            << a.model[i].first << " vs " << b.model[i].first;
      auto equal = testing::bitwise_equal(a.model[i].second, b.model[i].second);
      if (!equal)
        return equal << " (" << a.model[i].first << ")";
    }
    return ::testing::AssertionSuccess();
  }
  testing::TempDir temp_;
};

TEST_F(JobTest, AResumedRunEndsWithTheWeightsOfAnUninterruptedOne) {
  const auto whole = run(digits("whole"));
  ASSERT_EQ(whole.size(), 2u);
  EXPECT_GT(whole[0].test.at("accuracy"), 85.0);

  // Interrupted during float training, then during QAT (LSQ scales,
  // observers, BN-free MLP), resumed each time.
  JobOptions halt_float;
  halt_float.halt_stage = "float";
  halt_float.halt_step = 70;
  EXPECT_TRUE(run(digits("resumed"), halt_float).empty());
  JobOptions halt_qat;
  halt_qat.resume = true;
  halt_qat.halt_stage = "qat.w4a4";
  halt_qat.halt_step = 30;
  run(digits("resumed"), halt_qat);
  JobOptions resume;
  resume.resume = true;
  const auto resumed = run(digits("resumed"), resume);

  EXPECT_TRUE(
      same_weights(final_of("whole", "float"), final_of("resumed", "float")));
  EXPECT_TRUE(same_weights(
      final_of("whole", "qat.w4a4"), final_of("resumed", "qat.w4a4")));
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_EQ(resumed[1].test.at("accuracy"), whole[1].test.at("accuracy"));

  // Without --resume, an existing run is never overwritten.
  EXPECT_TRUE(testing::throws_with<TrainingError>(
      [&] { run(digits("whole")); },
      "run directory " + (temp_ / "whole") +
          " already holds checkpoints: pass --resume"));
}

TEST_F(JobTest, ACorruptCheckpointFallsBackToThePreviousOneWithAWarning) {
  run(digits("whole"), {}, {"float"});
  JobOptions halt;
  halt.halt_stage = "float";
  halt.halt_step = 100; // checkpoints at 50 and 100
  run(digits("broken"), halt, {"float"});
  const auto newest =
      temp_ / "broken/checkpoints/float/step-000000100.safetensors";
  fs::resize_file(newest, fs::file_size(newest) - 1);

  std::vector<std::string> warnings;
  JobOptions resume;
  resume.resume = true;
  resume.warn = [&](const std::string& w) { warnings.push_back(w); };
  run(digits("broken"), resume, {"float"});
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find(newest + ": "), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("trying the one before"), std::string::npos)
      << warnings[0];
  // Replayed from step 50: still the uninterrupted run's weights.
  EXPECT_TRUE(
      same_weights(final_of("whole", "float"), final_of("broken", "float")));
}

TEST_F(JobTest, ANanLossStopsTheRunAndKeepsTheLastGoodCheckpoint) {
  // A checkpoint every step; the learning rate blows the loss up at once.
  const auto recipe = digits(
      "nan",
      {"trainer.checkpoint.every=1",
       "trainer.float.optimizer.lr=1.0e6",
       "trainer.float.clip_grad_norm=0.0"});
  const std::string message =
      testing::error_message<TrainingError>([&] { run(recipe); });
  EXPECT_EQ(message.find("float: step "), 0u) << message;
  EXPECT_TRUE(
      message.find("the loss is nan") != std::string::npos ||
      message.find("the loss is inf") != std::string::npos ||
      message.find("the gradient norm is not finite") != std::string::npos)
      << message;
  // The checkpoint it names is the newest on disk, and it verifies.
  // What is on disk verifies and holds finite weights.
  const auto last =
      Checkpoints(temp_ / "nan/checkpoints/float", 3)
          .latest([](const std::string& w) { ADD_FAILURE() << w; });
  ASSERT_TRUE(last.has_value());
  EXPECT_FALSE(last->final);
  EXPECT_NE(
      message.find("(last good checkpoint: " + last->path + ")"),
      std::string::npos)
      << message;
  for (const auto& [name, t] : last->model)
    EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
}

// Two micro-batches of 32 accumulate the gradient of one batch of 64 (the
// same examples: batches are slices of one permutation per epoch).
TEST_F(JobTest, GradientAccumulationEqualsTheLargerBatch) {
  const auto once = digits(
      "once",
      {"data.batch_size=64",
       "trainer.float.steps=18",
       "trainer.float.schedule.warmup=2"});
  const auto twice = digits(
      "twice",
      {"data.batch_size=32",
       "+trainer.float.accumulate=2",
       "trainer.float.steps=18",
       "trainer.float.schedule.warmup=2"});
  run(once, {}, {"float"});
  run(twice, {}, {"float"});
  const auto a = final_of("once", "float"), b = final_of("twice", "float");
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    EXPECT_TRUE(
        torch::allclose(a.model[i].second, b.model[i].second, 1e-4, 1e-6))
        << a.model[i].first << ": "
        << (a.model[i].second - b.model[i].second).abs().max().item<float>();
  }
  // And the check can fail: without accumulation the steps see half the data.
  const auto half = digits(
      "half",
      {"data.batch_size=32",
       "trainer.float.steps=18",
       "trainer.float.schedule.warmup=2"});
  run(half, {}, {"float"});
  const auto c = final_of("half", "float");
  EXPECT_FALSE(
      torch::allclose(a.model[0].second, c.model[0].second, 1e-4, 1e-6));
}

TEST_F(JobTest, PtqAndQatCanStartFromGptq) {
  const auto results =
      run(digits(
              "gptq",
              {"trainer.ptq.schemes=[w4a4]",
               "+trainer.ptq.method=gptq",
               "+trainer.qat.init=gptq",
               "+trainer.gptq.block_size=16",
               "trainer.float.steps=30",
               "trainer.qat.steps=5"}),
          {},
          {"float", "ptq", "qat"});
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[1].name, "PTQ w4a4 (gptq)");
  EXPECT_TRUE(std::isfinite(results[2].test.at("loss")));
  // 16 calibration rows for 64 inputs: damped, and said.
  std::vector<std::string> warnings;
  JobOptions options;
  options.warn = [&](const std::string& w) { warnings.push_back(w); };
  run(digits(
          "gptq_small",
          {"trainer.ptq.schemes=[w4a4]",
           "+trainer.ptq.method=gptq",
           "data.batch_size=16",
           "trainer.calibration_batches=1",
           "trainer.float.steps=15"}),
      options,
      {"float", "ptq"});
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(
      warnings[0].find("saw 16 calibration tokens for 64 inputs: its Hessian "
                       "is rank-deficient"),
      std::string::npos)
      << warnings[0];
  const std::string message = testing::error_message<RecipeError>(
      [&] { Job(digits("hqq", {"+trainer.ptq.method=hqq"}), {}).check(); });
  EXPECT_NE(message.find("trainer.ptq.method"), std::string::npos) << message;
  EXPECT_NE(
      message.find("expected rtn, gptq, awq, smoothquant, got 'hqq'"),
      std::string::npos)
      << message;
  // AWQ folds into the op before each Linear: the MLP classifier names none.
  const std::string awq_message = testing::error_message<RecipeError>([&] {
    run(digits(
            "awq_mlp",
            {"trainer.ptq.schemes=[w4a4]",
             "+trainer.ptq.method=awq",
             "trainer.float.steps=15"}),
        {},
        {"float", "ptq"});
  });
  EXPECT_NE(awq_message.find("trainer.ptq.method"), std::string::npos)
      << awq_message;
  EXPECT_NE(awq_message.find("names no such points"), std::string::npos)
      << awq_message;
}

// A method per scheme: AWQ for the GGUF Q4_0 weights, SmoothQuant for W8A8,
// as PTQ and as QAT's start, on the small decoder; a scheme the stage does
// not list is refused by name.
TEST_F(JobTest, EachSchemeCalibratesByItsOwnMethod) {
  const auto recipe = Recipe::load(
      kRecipes + "/kjv.yaml",
      {"run.dir=" + (temp_ / "kjv_methods"),
       "run.device=cpu",
       "trainer.float.steps=30",
       "trainer.float.eval_every=0",
       "trainer.qat.steps=4",
       "trainer.qat.eval_every=0",
       "trainer.ptq.schemes=[q4_0, w8a8]",
       "trainer.qat.schemes=[q4_0]",
       "+trainer.ptq.method.q4_0=awq",
       "+trainer.ptq.method.w8a8=smoothquant",
       "+trainer.qat.init=awq",
       "+trainer.awq.grid=5",
       "+trainer.awq.clip_grid=4",
       "trainer.calibration_batches=2",
       "data.eval_windows=8"});
  const auto results = run(recipe, {}, {"float", "ptq", "qat"});
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[1].name, "PTQ q4_0 (awq)");
  EXPECT_EQ(results[2].name, "PTQ w8a8 (smoothquant)");
  for (const auto& r : results)
    EXPECT_TRUE(std::isfinite(r.test.at("loss"))) << r.name;

  const std::string message = testing::error_message<RecipeError>([&] {
    Job(Recipe::load(
            kRecipes + "/kjv.yaml",
            {"run.dir=" + (temp_ / "kjv_bad"),
             "trainer.ptq.schemes=[q4_0]",
             "+trainer.ptq.method.w8a8=smoothquant"}),
        {})
        .check();
  });
  EXPECT_NE(
      message.find(
          "trainer.ptq.method.w8a8: names no scheme of this stage (q4_0)"),
      std::string::npos)
      << message;
}

TEST_F(JobTest, LanguageModelsReportPerplexity) {
  const auto recipe = Recipe::load(
      kRecipes + "/kjv.yaml",
      {"run.dir=" + (temp_ / "kjv"),
       "run.device=cpu",
       "trainer.float.steps=40",
       "trainer.float.eval_every=0",
       "trainer.qat.steps=10",
       "trainer.qat.eval_every=0",
       "trainer.ptq.schemes=[q4_0]",
       "trainer.qat.schemes=[q4_0]",
       "data.eval_windows=32",
       "export.format=gguf",
       "export.schemes=[q4_0]"});
  const auto results =
      run(recipe, {}, {"float", "ptq", "qat", "eval", "export"});
  ASSERT_EQ(results.size(), 3u);
  for (const auto& r : results) {
    for (const auto* m : {&r.validation, &r.test}) {
      // Perplexity per byte is exp(mean cross-entropy), and 40 steps already
      // beat the uniform byte distribution (256) by far.
      EXPECT_NEAR(
          m->at("perplexity"),
          std::exp(m->at("loss")),
          1e-9 * m->at("perplexity"));
      EXPECT_LT(m->at("perplexity"), 64.0) << r.name;
    }
  }
  std::ifstream summary(temp_ / "kjv/summary.md");
  std::string header;
  std::getline(summary, header);
  EXPECT_EQ(
      header,
      "| model | test perplexity | vs float | validation perplexity | test loss | weights | "
      "QAT recovers |");
  EXPECT_TRUE(fs::exists(temp_ / "kjv/perplexity.png"));
  // The QAT model as GGUF: its Linear layers as the Q4_0 blocks it trained
  // with, the rest F32, readable as a decoder again.
  const auto exported = gguf::File::read(temp_ / "kjv/export/q4_0.gguf");
  for (const auto& t : exported.tensors()) {
    const bool linear = t.name.find("attn_") != std::string::npos ||
        t.name.find("ffn_gate") != std::string::npos ||
        t.name.find("ffn_up") != std::string::npos ||
        t.name.find("ffn_down") != std::string::npos;
    const bool norm = t.name.find("norm") != std::string::npos;
    EXPECT_EQ(
        t.type,
        linear && !norm ? gguf::TensorType::q4_0 : gguf::TensorType::f32)
        << t.name;
  }
  EXPECT_NO_THROW(models::load_llama_gguf(exported));
}

// qat sensitivity on the small decoder made fragile on purpose: moving a
// factor 1000 from layer 0's up_proj rows 5, 37, 69, ... into its down_proj
// columns (a scale fold) leaves the float model's function as it was, but
// each Q4_0 block of down_proj then holds one weight 1000x the others, which
// rounds them to zero. That layer must rank first, measured and
// estimated, and be the one a budget upgrades; the scheme written loads as a
// scheme and exports to GGUF with that tensor at Q8_0 and the rest at Q4_0.
TEST_F(JobTest, SensitivityRanksAFragileLayerFirstAndMixesUnderABudget) {
  const auto kjv = [&](const std::string& run,
                       std::vector<std::string> overrides) {
    for (const std::string& o : std::vector<std::string>{
             "run.dir=" + (temp_ / run),
             "run.device=cpu",
             "trainer.float.steps=30",
             "trainer.float.eval_every=0",
             "trainer.qat.steps=2",
             "trainer.qat.eval_every=0",
             "trainer.qat.schemes=[q4_0]",
             "export.format=gguf",
             "data.eval_windows=8"})
      overrides.push_back(o);
    return Recipe::load(kRecipes + "/kjv.yaml", overrides);
  };
  run(kjv("float", {}), {}, {"float"});
  Checkpoint fragile = final_of("float", "float");
  for (auto& [name, t] : fragile.model) {
    t = t.clone();
    // One input in every block of 32.
    for (int64_t c = 5; c < 352; c += 32) {
      if (name == "model.layers.0.mlp.up_proj.weight")
        t[c].div_(1000);
      if (name == "model.layers.0.mlp.down_proj.weight")
        t.select(1, c).mul_(1000);
    }
  }
  fragile.path = temp_ / "fragile.safetensors";
  write_checkpoint(fragile);

  // Q4_0 stores 4.5 bits per weight, Q8_0 8.5. The decoder's 14 layers hold
  // 368640 weights; 5.0 bits on average leaves 184320 bits for upgrades, room
  // for one 352 x 128 layer at Q8_0 (180224) and nothing more.
  const auto sensitivity =
      kjv("sensitivity",
          {"+trainer.float.load=" + (temp_ / "fragile.safetensors"),
           "+trainer.sensitivity.budget_bits=5.0"});
  run(sensitivity, {}, {"float", "sensitivity"});
  std::ifstream tsv(temp_ / "sensitivity/sensitivity.tsv");
  std::string header;
  std::getline(tsv, header);
  EXPECT_EQ(header, "layer\tweights\tcandidate\tbits\tmeasured\testimate");
  std::map<std::string, std::pair<std::string, double>> worst_measured,
      worst_estimate;
  std::map<std::string, double> bits;
  std::map<std::string, int64_t> weights_of;
  int64_t rows = 0, total_weights = 0;
  std::string layer, candidate;
  int64_t weights = 0;
  double b = 0, measured = 0, estimate = 0;
  double runner_up_measured = 0, runner_up_estimate = 0;
  while (tsv >> layer >> weights >> candidate >> b >> measured >> estimate) {
    ++rows;
    bits[layer + " " + candidate] = b;
    weights_of[layer] = weights;
    if (candidate == "q4_0")
      total_weights += weights;
    for (const auto& [worst, value] :
         {std::pair{&worst_measured, measured},
          std::pair{&worst_estimate, estimate}}) {
      auto& w = (*worst)[candidate];
      if (w.first.empty() || value > w.second)
        w = {layer, value};
    }
    if (candidate == "q4_0" && layer != "model.layers.0.mlp.down_proj") {
      runner_up_measured = std::max(runner_up_measured, measured);
      runner_up_estimate = std::max(runner_up_estimate, estimate);
    }
  }
  EXPECT_EQ(rows, 14 * 2); // 7 Linear layers per decoder layer, 2 candidates
  EXPECT_EQ(total_weights, 368640);
  for (const auto* worst : {&worst_measured, &worst_estimate})
    EXPECT_EQ(worst->at("q4_0").first, "model.layers.0.mlp.down_proj");
  // By a wide margin, not by a rounding: the next layer is far below.
  EXPECT_GT(worst_measured.at("q4_0").second, 10 * runner_up_measured);
  EXPECT_GT(worst_estimate.at("q4_0").second, 3 * runner_up_estimate)
      << worst_estimate.at("q4_0").second << " vs " << runner_up_estimate;
  EXPECT_DOUBLE_EQ(bits.at("model.layers.0.mlp.down_proj q4_0"), 4.5);
  EXPECT_DOUBLE_EQ(bits.at("model.layers.0.mlp.down_proj q8_0"), 8.5);
  EXPECT_TRUE(fs::exists(temp_ / "sensitivity/sensitivity.png"));
  EXPECT_TRUE(fs::exists(temp_ / "sensitivity/sensitivity.md"));

  // The scheme: a rule per layer, within the budget, the fragile layer at
  // Q8_0.
  const auto mixed =
      kjv("mixed",
          {"+trainer.float.load=" + (temp_ / "fragile.safetensors"),
           "quant@quant.q4_0=" + (temp_ / "sensitivity/mixed_precision")});
  const QuantConfig config = recipe::quant_config(mixed, "quant.q4_0");
  ASSERT_EQ(config.rules.size(), 14u);
  double stored = 0;
  std::map<std::string, std::string> chosen;
  for (const auto& rule : config.rules) {
    const std::string type =
        rule.specs->weight->spec().gguf() == GgufRule::q8_0 ? "q8_0" : "q4_0";
    chosen[rule.pattern] = type;
    stored += bits.at(rule.pattern + " " + type) * weights_of.at(rule.pattern);
  }
  EXPECT_EQ(chosen.at("model.layers.0.mlp.down_proj"), "q8_0");
  EXPECT_LE(stored / total_weights, 5.0);
  run(mixed, {}, {"float", "qat", "export"});
  const auto exported = gguf::File::read(temp_ / "mixed/export/q4_0.gguf");
  int64_t q8 = 0;
  for (const auto& t : exported.tensors()) {
    if (t.name == "blk.0.ffn_down.weight") {
      EXPECT_EQ(t.type, gguf::TensorType::q8_0);
    }
    q8 += t.type == gguf::TensorType::q8_0 ? 1 : 0;
  }
  EXPECT_EQ(q8, std::count_if(chosen.begin(), chosen.end(), [](const auto& c) {
              return c.second == "q8_0";
            }));

  // A budget below every layer at Q4_0: refused by key, with the least
  // there is.
  const std::string message = testing::error_message<RecipeError>([&] {
    run(kjv("too_small",
            {"+trainer.float.load=" + (temp_ / "fragile.safetensors"),
             "+trainer.sensitivity.budget_bits=4.0",
             "+trainer.sensitivity.measure=false"}),
        {},
        {"float", "sensitivity"});
  });
  EXPECT_NE(message.find("trainer.sensitivity.budget_bits"), std::string::npos)
      << message;
  EXPECT_NE(
      message.find("a budget of 4.000 bits per weight is below the smallest "
                   "choice, 4.500"),
      std::string::npos)
      << message;
}

TEST(MixedPrecision, SpendsTheBudgetWhereItSavesMostLoss) {
  // Three layers, candidates (4.5, 6.5, 8.5) bits; layer b is fragile.
  const std::vector<LayerChoices> layers = {
      {"a", 100, {4.5, 6.5, 8.5}, {1.0, 0.4, 0.3}},
      {"b", 100, {4.5, 6.5, 8.5}, {9.0, 1.0, 0.1}},
      {"c", 200, {4.5, 6.5, 8.5}, {0.5, 0.45, 0.44}}};
  const auto at = [&](double budget) {
    return choose_mixed_precision(layers, budget);
  };
  EXPECT_EQ(at(4.5).choice, (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(at(8.5).choice, (std::vector<int>{2, 2, 2}));
  // 200 extra bits: b to 6.5 first (4 per bit), then b to 8.5 (0.45 per bit).
  EXPECT_EQ(at(5.0).choice, (std::vector<int>{0, 1, 0}));
  EXPECT_EQ(at(5.5).choice, (std::vector<int>{0, 2, 0}));
  EXPECT_NEAR(at(5.5).average_bits, 5.5, 1e-12);
  // Against every assignment that fits, at budgets between the candidates.
  for (double budget = 4.5; budget <= 8.5; budget += 0.25) {
    const auto mix = at(budget);
    EXPECT_LE(mix.average_bits, budget + 1e-12);
    double best = 1e9;
    for (int i = 0; i < 27; ++i) {
      const int c[3] = {i % 3, i / 3 % 3, i / 9};
      double bits = 0, loss = 0;
      for (int k = 0; k < 3; ++k) {
        bits += layers[k].bits[c[k]] * layers[k].weights;
        loss += layers[k].loss[c[k]];
      }
      if (bits <= budget * 400 + 1e-9)
        best = std::min(best, loss);
    }
    // The greedy solution is optimal here up to the one upgrade the budget
    // cuts; on this instance it is within 0.5 of the optimum.
    EXPECT_LE(mix.loss, best + 0.5) << budget;
    EXPECT_GE(mix.loss, best - 1e-12) << budget;
  }
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] { at(4.0); },
      "a budget of 4.000 bits per weight is below the smallest choice, 4.500"));
}

// -- distributed --------------------------------------------------------------

std::function<std::optional<std::string>(const std::string&)> environment(
    std::map<std::string, std::string> values) {
  return [values](const std::string& name) -> std::optional<std::string> {
    const auto it = values.find(name);
    return it == values.end() ? std::nullopt : std::optional(it->second);
  };
}

TEST(Launch, ReadsTorchrunThenSlurmVariables) {
  const auto none = Launch::from_environment(environment({}));
  EXPECT_EQ(none.launcher, "none");
  EXPECT_EQ(none.world_size, 1);

  const auto torchrun = Launch::from_environment(environment(
      {{"RANK", "5"},
       {"WORLD_SIZE", "16"},
       {"LOCAL_RANK", "1"},
       {"MASTER_ADDR", "node07"},
       {"MASTER_PORT", "29400"},
       {"SLURM_PROCID", "3"}, // torchrun under an allocation: torchrun wins
       {"SLURM_NTASKS", "2"}}));
  EXPECT_EQ(torchrun.launcher, "torchrun");
  EXPECT_EQ(torchrun.rank, 5);
  EXPECT_EQ(torchrun.world_size, 16);
  EXPECT_EQ(torchrun.local_rank, 1);
  EXPECT_EQ(torchrun.master_addr, "node07");
  EXPECT_EQ(torchrun.master_port, 29400);

  const auto slurm = Launch::from_environment(environment(
      {{"SLURM_PROCID", "9"},
       {"SLURM_NTASKS", "16"},
       {"SLURM_LOCALID", "1"},
       {"SLURM_JOB_NODELIST", "gpu-a[003-004,017],gpu-b9"}}));
  EXPECT_EQ(slurm.launcher, "slurm");
  EXPECT_EQ(slurm.rank, 9);
  EXPECT_EQ(slurm.world_size, 16);
  EXPECT_EQ(slurm.local_rank, 1);
  EXPECT_EQ(slurm.master_addr, "gpu-a003");
  EXPECT_EQ(slurm.master_port, 29500);
}

TEST(Launch, MalformedVariablesAreNamed) {
  const auto error_of = [](std::map<std::string, std::string> values) {
    try {
      Launch::from_environment(environment(std::move(values)));
    } catch (const DistributedError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(
      error_of({{"RANK", "one"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}})
          .find("RANK='one'"),
      std::string::npos);
  EXPECT_NE(
      error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}})
          .find("outside a world of 2"),
      std::string::npos);
  EXPECT_NE(
      error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("MASTER_ADDR"),
      std::string::npos);
  EXPECT_NE(
      error_of({{"SLURM_PROCID", "0"},
                {"SLURM_NTASKS", "2"},
                {"MASTER_PORT", "70000"}})
          .find("not a TCP port"),
      std::string::npos);
}

// SLURM's hostlist expressions (scontrol show hostnames' first line).
TEST(Launch, FirstHostOfASlurmNodeList) {
  EXPECT_EQ(first_slurm_host("node17"), "node17");
  EXPECT_EQ(first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(first_slurm_host("gpu[007-009,012],cpu1"), "gpu007");
  EXPECT_EQ(first_slurm_host("rack[2,4]-ib"), "rack2-ib");
  EXPECT_EQ(first_slurm_host("a[10],b[1-2]"), "a10");
  EXPECT_THROW(first_slurm_host("gpu[1-2"), DistributedError);
}

// The global generator is shared by the rank threads: each draws from its own.
torch::Tensor seeded_randn(at::IntArrayRef sizes, uint64_t seed) {
  return torch::randn(sizes, at::detail::createCPUGenerator(seed));
}

void seed_parameters(torch::nn::Module& module, uint64_t seed) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    p.copy_(seeded_randn(p.sizes(), seed++) * 0.5);
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), length);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

// Two ranks of a real Gloo group on loopback, one per thread; body(dist)
// runs on each. Exceptions come back to the test's thread.
void on_two_ranks(
    const std::function<void(Distributed&)>& body,
    std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const int port = free_port();
  std::exception_ptr errors[2];
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        Launch launch;
        launch.rank = r;
        launch.world_size = 2;
        launch.master_port = port;
        launch.launcher = "test";
        DistributedOptions options;
        options.timeout = timeout;
        Distributed dist(launch, torch::kCPU, options);
        body(dist);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : ranks)
    t.join();
  for (auto& e : errors)
    if (e)
      std::rethrow_exception(e);
}

TEST(Distributed, OneProcessNeedsNoGroup) {
  Distributed one;
  EXPECT_EQ(one.world_size(), 1);
  EXPECT_EQ(one.backend(), "none");
  auto t = torch::tensor({1.0, 2.0});
  one.all_reduce(t, ReduceOp::sum);
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.0, 2.0})));
  EXPECT_EQ(one.gather_over_ranks(t).sizes(), (std::vector<int64_t>{1, 2}));
}

TEST(Distributed, CollectivesOverGloo) {
  on_two_ranks([](Distributed& d) {
    EXPECT_EQ(d.backend(), "gloo");
    const double r = static_cast<double>(d.rank());
    auto sum = torch::tensor({r, 10 * r});
    d.all_reduce(sum, ReduceOp::sum);
    EXPECT_TRUE(torch::equal(sum, torch::tensor({1.0, 10.0})));
    auto low = torch::tensor({r, -r}), high = low.clone();
    d.all_reduce(low, ReduceOp::min);
    d.all_reduce(high, ReduceOp::max);
    EXPECT_TRUE(torch::equal(low, torch::tensor({0.0, -1.0})));
    EXPECT_TRUE(torch::equal(high, torch::tensor({1.0, 0.0})));
    std::vector<double> values{r + 0.5};
    d.all_reduce(values, ReduceOp::sum);
    EXPECT_EQ(values[0], 2.0);
    // Rank 0's tensors of several dtypes, one of them not contiguous.
    auto a = torch::full({3}, r),
         b = torch::full({2, 2}, 7 * r).to(torch::kLong);
    d.broadcast({a, b});
    EXPECT_TRUE(torch::equal(a, torch::zeros({3}, torch::kDouble)));
    EXPECT_TRUE(torch::equal(b, torch::zeros({2, 2}, torch::kLong)));
    d.barrier("the test's end");
    EXPECT_GT(d.communication_seconds(), 0.0);
  });
}

// The Reducer's gradients are the ranks' mean; with accumulation the mean of
// each rank's sum over its micro-batches.
TEST(Distributed, DataParallelAveragesGradients) {
  on_two_ranks([](Distributed& d) {
    torch::nn::Sequential model(
        torch::nn::Linear(5, 16), torch::nn::ReLU(), torch::nn::Linear(16, 3));
    seed_parameters(*model, 3); // the same model on both ranks
    const auto inputs = [](int64_t rank, int micro) {
      return seeded_randn({4, 5}, 100 + 10 * rank + micro);
    };
    const auto loss_of = [&](torch::nn::Sequential& m, const torch::Tensor& x) {
      return m->forward(x).square().mean();
    };
    // The reference: every rank's local gradients, computed here.
    std::vector<torch::Tensor> expected;
    for (const auto& p : model->parameters())
      expected.push_back(torch::zeros_like(p));
    for (int64_t rank = 0; rank < 2; ++rank) {
      auto copy =
          std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone());
      torch::nn::Sequential local(copy);
      for (int micro = 0; micro < 2; ++micro)
        loss_of(local, inputs(rank, micro)).backward();
      const auto params = local->parameters();
      for (size_t i = 0; i < params.size(); ++i)
        expected[i] += params[i].grad() / 2;
    }
    auto sync = d.data_parallel(model->parameters(), false);
    for (int micro = 0; micro < 2; ++micro) {
      const auto loss = loss_of(model, inputs(d.rank(), micro));
      sync->before_backward(loss, /*average=*/micro == 1);
      loss.backward();
    }
    const auto params = model->parameters();
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_TRUE(torch::allclose(params[i].grad(), expected[i], 1e-6, 1e-7))
          << "parameter " << i << " on rank " << d.rank();
  });
}

// Synchronous BN through c10d: each rank normalises its half with the global
// batch's statistics, and the gradients that reach the weights, summed over
// the ranks, are BatchNorm2d's over the whole batch.
TEST(Distributed, SynchronousBnGradientsAreTheWholeBatchs) {
  on_two_ranks([](Distributed& d) {
    torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3).bias(false));
    torch::nn::BatchNorm2d bn(4);
    seed_parameters(*conv, 8);
    seed_parameters(*bn, 9);
    const auto x = seeded_randn({6, 3, 6, 6}, 10) + 0.5;
    const auto upstream = seeded_randn({6, 4, 4, 4}, 11);
    auto mine = QuantConv2d::from_float(conv, {}, bn);
    const auto y_ref = bn(conv(x));
    (y_ref * upstream).sum().backward();

    mine->zero_grad();
    mine->set_batch_stats_gather(
        [&](const torch::Tensor& local) { return d.gather_over_ranks(local); });
    mine->train();
    const auto half = [&](const torch::Tensor& t) {
      return t.narrow(0, 3 * d.rank(), 3);
    };
    const auto y = mine(half(x));
    EXPECT_TRUE(torch::allclose(y, half(y_ref).detach(), 1e-5, 1e-5));
    EXPECT_TRUE(torch::allclose(
        mine->batch_norm->running_var, bn->running_var, 1e-5, 1e-6));
    (y * half(upstream)).sum().backward();
    for (auto* pair :
         {&mine->weight, &mine->batch_norm->weight, &mine->batch_norm->bias}) {
      auto g = pair->grad().clone();
      d.all_reduce(g, ReduceOp::sum);
      const auto& expected = pair == &mine->weight ? conv->weight.grad()
          : pair == &mine->batch_norm->weight      ? bn->weight.grad()
                                                   : bn->bias.grad();
      EXPECT_TRUE(torch::allclose(g, expected, 1e-4, 1e-5)) << d.rank();
    }
  });
}

// A rank that stops: on an error it announces, the other names it and its
// reason; silently (its sockets closed), the other names it as not answering.
TEST(Distributed, ALostRankIsNamed) {
  // What rank 0 reports when rank 1 leaves after the first barrier, having
  // announced `reason` (or nothing).
  const auto rank0_error = [](const std::string& reason) {
    std::string error;
    on_two_ranks([&](Distributed& d) {
      d.barrier("start");
      if (d.rank() == 1) {
        if (!reason.empty())
          d.announce_failure(reason);
        return;
      }
      auto t = torch::ones({4});
      try {
        for (int i = 0; i < 100; ++i)
          d.all_reduce(t, ReduceOp::sum, "step 3: averaging the loss");
      } catch (const DistributedError& e) {
        error = e.what();
      }
    });
    return error;
  };
  const auto announced = rank0_error("disk full");
  const auto silent = rank0_error("");
  EXPECT_NE(
      announced.find("rank 0 of 2: step 3: averaging the loss failed: rank 1 "
                     "stopped with: disk full"),
      std::string::npos)
      << announced;
  EXPECT_NE(
      silent.find("rank 1 did not answer within 3 s: died or hung"),
      std::string::npos)
      << silent;
}

} // namespace
} // namespace qat::train
