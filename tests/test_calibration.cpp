// Calibration by equivalent transforms on the Llama-style decoder: folding
// scales leaves the float model's function unchanged (and matters: the same
// scales on the readers alone change it), AWQ lowers the output error of
// every scale-folding point below round to nearest's and the model's, for
// integer groups and GGUF blocks alike, and SmoothQuant's scales are the
// paper's and shrink the activation outliers that W8A8 loses to. GPTQ's tests
// are in test_modules.cpp and tests/python/test_gptq.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "qat/calibration/awq.h"
#include "qat/calibration/scale_folding.h"
#include "qat/calibration/smoothquant.h"
#include "qat/convert.h"
#include "qat/prepare.h"
#include "tests/test_helpers.h"
#include "trainers/models/llama.h"

namespace qat {
namespace {

using models::LlamaConfig;
using models::LlamaForCausalLM;

LlamaConfig decoder(int64_t kv_heads, bool tied) {
  return LlamaConfig()
      .vocab_size(96)
      .hidden_size(64)
      .intermediate_size(128)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(kv_heads)
      .max_position_embeddings(64)
      .tie_word_embeddings(tied);
}

// A decoder whose norms give a few channels inputs 20x the rest (as trained
// LLMs' do), the same one for the same seed.
LlamaForCausalLM with_outliers(const LlamaConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  LlamaForCausalLM lm(config);
  torch::NoGradGuard no_grad;
  for (const auto& p : lm->named_parameters()) {
    if (p.key().find("layernorm") != std::string::npos)
      p.value().index_fill_(0, torch::tensor({3, 17, 40}), 20.0);
  }
  return lm;
}

LayerQuantSpecs weight_only(const QuantSpec& spec) {
  return {FakeQuantizerOptions(spec), std::nullopt, std::nullopt};
}

double mse(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).pow(2).mean().item<double>();
}

TEST(ScaleFolding, LeavesTheDecodersFunctionUnchanged) {
  // Multi-head with its own head (v -> o and norm -> lm_head fold too), and
  // grouped-query with a tied head.
  for (const auto& config : {decoder(4, false), decoder(2, true)}) {
    SCOPED_TRACE(config.num_key_value_heads());
    torch::manual_seed(2);
    LlamaForCausalLM lm(config);
    lm->eval();
    torch::NoGradGuard no_grad;
    const auto tokens = torch::randint(0, 96, {2, 12});
    const auto before = lm(tokens);
    auto points = lm->scale_fold_points();
    const size_t expected = config.num_key_value_heads() == 4 ? 9 : 6;
    ASSERT_EQ(points.size(), expected);
    for (const auto& point : points) {
      const int64_t channels = point.producer_weight.size(0);
      fold_scales(point, torch::exp(torch::randn({channels}) * 0.7));
    }
    const auto after = lm(tokens);
    // fp32: each fold changes a product's rounding by a few ulps; the logits
    // are O(1), 1e-4 is a thousand times that and far below what a wrong
    // fold does (next check).
    EXPECT_LT((after - before).abs().max().item<double>(), 1e-4);

    // The same scales on the readers alone change the outputs: the check
    // above can fail.
    auto readers_only = points.front();
    readers_only.producer_weight =
        torch::ones_like(readers_only.producer_weight);
    fold_scales(readers_only, torch::full({64}, 2.0));
    EXPECT_GT((lm(tokens) - before).abs().max().item<double>(), 1e-2);
  }
}

TEST(ScaleFolding, RefusesScalesThatDoNotFit) {
  torch::manual_seed(2);
  LlamaForCausalLM lm(decoder(2, true));
  const auto points = lm->scale_fold_points();
  const auto norm = points.front().producer_weight.clone();
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] { fold_scales(points.front(), torch::ones({63})); },
      "model.layers.0.input_layernorm has 64 channels, the scale 63"));
  auto bad = torch::ones({64});
  bad[5] = 0;
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] { fold_scales(points.front(), bad); }, "positive and finite"));
  EXPECT_TRUE(torch::equal(points.front().producer_weight, norm));
}

// AWQ against round to nearest on the same decoder with outlier inputs: the
// readers' output error at every point is at most RTN's (s = 1 and r = 1 are
// among the candidates) and well below it at the points with outliers; the
// model's logits are closer to the float model's; convert() serves what was
// calibrated.
TEST(Awq, ScalesAndClipsBelowRoundToNearest) {
  const auto int4_g32 = QuantSpec()
                            .bits(4)
                            .granularity(Granularity::per_group)
                            .axis(-1)
                            .group_size(32);
  for (const auto& spec : {int4_g32, QuantSpec::gguf_block(GgufRule::q4_0)}) {
    SCOPED_TRACE(spec.to_string());
    const QuantConfig config{
        {QuantRule::quantize("model.layers.*", weight_only(spec), "Linear")}};
    torch::manual_seed(5);
    const auto calibration = torch::randint(0, 96, {4, 32});
    const auto held_out = torch::randint(0, 96, {4, 32});

    auto reference = with_outliers(decoder(2, true), 7);
    reference->eval();
    torch::NoGradGuard no_grad;
    const auto expected = reference(held_out);

    auto rtn = with_outliers(decoder(2, true), 7);
    prepare(*rtn, config);
    rtn->eval();
    calibrate(*rtn, [&] { rtn(calibration); });

    auto awq = with_outliers(decoder(2, true), 7);
    prepare(*awq, config);
    awq->eval();
    const auto reports = calibrate_awq(
        *awq, awq->scale_fold_points(), [&] { awq(calibration); });
    ASSERT_EQ(reports.size(), 6u);
    std::vector<double> ratios;
    for (const auto& r : reports) {
      EXPECT_EQ(r.tokens, 128) << r.name;
      EXPECT_LE(r.error_vs_rtn, 1.0 + 1e-6) << r.name;
      ratios.push_back(r.error_vs_rtn);
    }
    // The norm-fed points carry the outliers.
    EXPECT_LT(reports[0].error_vs_rtn, 0.5) << reports[0].name;
    EXPECT_LT(reports[1].error_vs_rtn, 0.5) << reports[1].name;
    const double rtn_error = mse(rtn(held_out), expected);
    const double awq_error = mse(awq(held_out), expected);
    EXPECT_LT(awq_error, 0.8 * rtn_error)
        << "awq " << awq_error << ", rtn " << rtn_error;

    const auto fake_quantized = awq(held_out);
    convert(*awq);
    EXPECT_TRUE(testing::bitwise_equal(awq(held_out), fake_quantized));
  }
}

TEST(Awq, RefusesAModelWithNothingToScale) {
  torch::manual_seed(2);
  LlamaForCausalLM lm(decoder(2, true));
  const auto tokens = torch::randint(0, 96, {1, 8});
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] { calibrate_awq(*lm, lm->scale_fold_points(), [&] { lm(tokens); }); },
      "no Linear layer that reads a scale-folding point has a weight "
      "quantizer"));
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] {
        calibrate_awq(
            *lm,
            lm->scale_fold_points(),
            [&] { lm(tokens); },
            AwqOptions().max_shrink(1.0));
      },
      "max_shrink in [0, 1)"));
}

TEST(SmoothQuant, MigratesOutliersIntoTheWeights) {
  // The paper's s_j = max|x_j|^a / max|W_j|^(1-a), written out per channel.
  torch::manual_seed(3);
  const auto x_max = torch::rand({8}, torch::kDouble) * 10;
  const std::vector<torch::Tensor> weights = {
      torch::randn({5, 8}), torch::randn({3, 8})};
  const auto s = smoothquant_scales(x_max, weights, 0.3);
  for (int64_t j = 0; j < 8; ++j) {
    double w_max = 0;
    for (const auto& w : weights)
      for (int64_t i = 0; i < w.size(0); ++i)
        w_max = std::max(w_max, std::abs(w[i][j].item<double>()));
    const double expected =
        std::pow(x_max[j].item<double>(), 0.3) / std::pow(w_max, 0.7);
    EXPECT_NEAR(s[j].item<double>(), expected, 1e-6 * expected) << j;
  }

  const QuantConfig config{
      {QuantRule::quantize("model.layers.*", preset("w8a8_int8"), "Linear")}};
  const auto calibration = torch::randint(0, 96, {4, 32});
  const auto held_out = torch::randint(0, 96, {4, 32});
  auto reference = with_outliers(decoder(2, true), 9);
  reference->eval();
  torch::NoGradGuard no_grad;
  const auto expected = reference(held_out);
  auto rtn = with_outliers(decoder(2, true), 9);
  prepare(*rtn, config);
  rtn->eval();
  calibrate(*rtn, [&] { rtn(calibration); });
  auto smooth = with_outliers(decoder(2, true), 9);
  prepare(*smooth, config);
  smooth->eval();
  const auto reports = calibrate_smoothquant(
      *smooth, smooth->scale_fold_points(), [&] { smooth(calibration); });
  ASSERT_EQ(reports.size(), 6u);
  for (const auto& r : {reports[0], reports[1]}) {
    EXPECT_GT(r.outlier_ratio_before, 10) << r.name;
    EXPECT_LT(r.outlier_ratio_after, 0.5 * r.outlier_ratio_before) << r.name;
  }
  const double rtn_error = mse(rtn(held_out), expected);
  const double smooth_error = mse(smooth(held_out), expected);
  EXPECT_LT(smooth_error, rtn_error)
      << "smoothquant " << smooth_error << ", rtn " << rtn_error;

  // Weight-only: nothing to smooth, and the model is left as it was.
  auto weight_only_model = with_outliers(decoder(2, true), 9);
  prepare(
      *weight_only_model,
      {{QuantRule::quantize(
          "*",
          weight_only(QuantSpec()
                          .bits(4)
                          .granularity(Granularity::per_group)
                          .axis(-1)
                          .group_size(32)),
          "Linear")}});
  const auto norm =
      weight_only_model->scale_fold_points()[0].producer_weight.clone();
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [&] {
        calibrate_smoothquant(
            *weight_only_model, weight_only_model->scale_fold_points(), [&] {
              weight_only_model(calibration);
            });
      },
      "for weight-only schemes use awq or gptq"));
  EXPECT_TRUE(torch::equal(
      weight_only_model->scale_fold_points()[0].producer_weight, norm));
}

} // namespace
} // namespace qat
