// The simulated-matmul ops on the CPU (the reference kernels): row codes
// against the fake-quant ops, exact int8 sums, quant_linear against the
// fake-quant composition it simulates (forward and gradients), shapes on Meta
// and the error messages. tests/test_cuda.cpp holds the CUDA path to these.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/ops.h"
#include "qat/modules/linear.h"
#include "qat/observer.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;
using testing::hard_values;

const torch::ScalarType kDtypes[] = {torch::kFloat, torch::kBFloat16};

torch::Tensor dequantized(
    const torch::Tensor& codes,
    const torch::Tensor& scale,
    torch::ScalarType dtype) {
  return (codes.to(torch::kFloat) * scale.unsqueeze(1)).to(dtype);
}

TEST(QuantizeRows, CodesTimesScalesAreTheFakeQuantOutput) {
  const auto int8_tokens =
      QuantSpec().granularity(Granularity::per_token).dynamic(true);
  const auto fp8_tokens = QuantSpec(int8_tokens).format(NumberFormat::fp8_e4m3);
  for (auto dtype : kDtypes) {
    for (int64_t cols : {1, 7, 129}) {
      const auto x = hard_values({33, cols}, 0.05, cols, true).to(dtype);
      // Dynamic per token, against the observers' scales and the fake-quant
      // ops.
      {
        auto [codes, scale, mask] = ops::quantize_rows(x, std::nullopt, "int8");
        const QParams q = dynamic_qparams(x, int8_tokens);
        auto [y, m] = ops::fake_quant_affine_cachemask(
            x, q.scale, q.zero_point, -1, cols, -128, 127);
        EXPECT_EQ(codes.scalar_type(), torch::kChar);
        EXPECT_TRUE(bitwise_equal(scale, q.scale.view({-1})));
        EXPECT_TRUE(bitwise_equal(dequantized(codes, scale, dtype), y));
        EXPECT_TRUE(torch::equal(mask, m));
      }
      {
        auto [codes, scale, mask] =
            ops::quantize_rows(x, std::nullopt, "e4m3fn");
        const QParams q = dynamic_qparams(x, fp8_tokens);
        auto [y, m] =
            ops::fake_quant_fp8_cachemask(x, q.scale, -1, cols, "e4m3fn");
        EXPECT_EQ(codes.scalar_type(), torch::kFloat8_e4m3fn);
        EXPECT_TRUE(bitwise_equal(scale, q.scale.view({-1})));
        EXPECT_TRUE(bitwise_equal(dequantized(codes, scale, dtype), y));
        EXPECT_TRUE(torch::equal(mask, m));
      }
      // Given scales, one per row or one for all.
      const auto per_row = torch::rand({33}) * 0.02 + 0.001;
      const auto zp = torch::zeros({33}, torch::kInt);
      for (const auto& s : {per_row, per_row.slice(0, 0, 1)}) {
        auto [codes, scale, mask] = ops::quantize_rows(x, s, "int8");
        auto [y, m] = ops::fake_quant_affine_cachemask(
            x, s.expand({33}).contiguous(), zp, 0, 0, -128, 127);
        EXPECT_TRUE(bitwise_equal(scale, s.expand({33}).contiguous()));
        EXPECT_TRUE(bitwise_equal(dequantized(codes, scale, dtype), y));
        EXPECT_TRUE(torch::equal(mask, m));
      }
    }
  }
}

// int8 sums are exact: with unit scales the output is the int64 product; FP8
// codes holding small integers give exact float sums too.
TEST(QMatmul, SumsAreExactOnIntegers) {
  torch::manual_seed(4);
  for (int64_t m : {1, 17, 64}) {
    for (int64_t k : {7, 129}) {
      for (int64_t n : {1, 33}) {
        const auto a = torch::randint(-128, 128, {m, k}).to(torch::kChar);
        const auto b = torch::randint(-128, 128, {n, k}).to(torch::kChar);
        const auto exact =
            a.to(torch::kLong).mm(b.to(torch::kLong).t()).to(torch::kFloat);
        const auto y = ops::qmatmul(
            a,
            b,
            torch::ones({m}),
            torch::ones({n}),
            std::nullopt,
            torch::kFloat);
        EXPECT_TRUE(torch::equal(y, exact)) << m << "x" << k << "x" << n;

        const auto fa = torch::randint(-8, 9, {m, k}).to(torch::kFloat);
        const auto fb = torch::randint(-8, 9, {n, k}).to(torch::kFloat);
        const auto y8 = ops::qmatmul(
            fa.to(torch::kFloat8_e4m3fn),
            fb.to(torch::kFloat8_e4m3fn),
            torch::full({m}, 0.5),
            torch::full({n}, 4.0),
            std::nullopt,
            torch::kFloat);
        EXPECT_TRUE(torch::equal(y8, fa.mm(fb.t()) * 2));
      }
    }
  }
}

TEST(QMatmul, EpilogueAppliesScalesAndBias) {
  torch::manual_seed(5);
  const auto a = torch::randint(-128, 128, {9, 40}).to(torch::kChar);
  const auto b = torch::randint(-128, 128, {5, 40}).to(torch::kChar);
  const auto sa = torch::rand({9}) * 0.1, sb = torch::rand({5}) * 0.1,
             bias = torch::randn({5});
  const auto expected =
      (a.to(torch::kDouble).mm(b.to(torch::kDouble).t()) *
           sa.to(torch::kDouble).unsqueeze(1) * sb.to(torch::kDouble) +
       bias.to(torch::kDouble))
          .to(torch::kFloat);
  for (auto dtype : kDtypes) {
    const auto y = ops::qmatmul(a, b, sa, sb, bias, dtype);
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_TRUE(torch::allclose(
        y.to(torch::kFloat), expected, dtype == torch::kFloat ? 1e-6 : 1e-2));
  }
}

// On the CPU QuantLinear takes the fake-quant path; quant_linear fed the
// weight quantizer's output (as QuantLinear does on CUDA) gives the same
// output and the same gradients, the weight quantizer's backward (mask or
// LSQ) included.
TEST(QuantLinearOp, IsTheFakeQuantComposition) {
  const auto w4 =
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0);
  const auto int8_tokens =
      QuantSpec().granularity(Granularity::per_token).dynamic(true);
  const std::tuple<const char*, LayerQuantSpecs, const char*> cases[] = {
      {"w8a8_int8", preset("w8a8_int8"), "int8"},
      {"fp8_e4m3", preset("fp8_e4m3"), "e4m3fn"},
      {"w4 lsq a8",
       LayerQuantSpecs{
           FakeQuantizerOptions(w4).estimator(Estimator::lsq),
           FakeQuantizerOptions(int8_tokens),
           std::nullopt},
       "int8"}};
  for (const auto& [name, specs, format] : cases) {
    torch::manual_seed(6);
    torch::nn::Linear fc(48, 24);
    auto fake = QuantLinear::from_float(fc, specs);
    auto simulated = QuantLinear::from_float(fc, specs);
    const auto x = torch::randn({3, 5, 48}), dy = torch::randn({3, 5, 24});
    auto xf = x.clone().requires_grad_(true);
    auto xs = x.clone().requires_grad_(true);
    const auto y = fake(xf);
    y.backward(dy);
    // The weight quantizer observes first, then its scale is read.
    const auto w = simulated->effective_weight(simulated->weight);
    const auto ys = ops::quant_linear(
        xs,
        w,
        simulated->quantizers.weight->scale().detach(),
        simulated->bias,
        format);
    ys.backward(dy);
    EXPECT_TRUE(torch::allclose(y, ys, 1e-5, 1e-5)) << name;
    EXPECT_TRUE(torch::allclose(xf.grad(), xs.grad(), 1e-5, 1e-5)) << name;
    const auto fake_params = fake->named_parameters();
    for (const auto& p : simulated->named_parameters()) {
      EXPECT_TRUE(torch::allclose(
          fake_params[p.key()].grad(), p.value().grad(), 1e-5, 1e-5))
          << name << " " << p.key();
    }
  }
}

TEST(QMatmul, MetaTensorsGiveShapesOnly) {
  const auto meta = torch::TensorOptions(torch::kMeta);
  auto [codes, scale, mask] =
      ops::quantize_rows(torch::empty({6, 32}, meta), std::nullopt, "e4m3fn");
  EXPECT_EQ(codes.scalar_type(), torch::kFloat8_e4m3fn);
  EXPECT_EQ(scale.sizes(), torch::IntArrayRef({6}));
  EXPECT_EQ(mask.sizes(), torch::IntArrayRef({6, 32}));
  const auto y = ops::quant_linear(
      torch::empty({2, 3, 32}, meta),
      torch::empty({16, 32}, meta),
      torch::empty({16}, meta),
      std::nullopt,
      "int8");
  EXPECT_TRUE(y.is_meta());
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 3, 16}));
}

TEST(QMatmul, BadArgumentsGiveClearErrors) {
  auto expect_error = [](const std::function<void()>& call,
                         const std::string& words) {
    EXPECT_TRUE(testing::throws_with<c10::Error>(call, words));
  };
  const auto x = torch::randn({4, 8});
  expect_error(
      [&] { ops::quantize_rows(x, std::nullopt, "int4"); },
      "unknown matmul format 'int4'");
  expect_error(
      [&] { ops::quantize_rows(x, torch::ones({3}), "int8"); },
      "one value or one per row (4)");
  expect_error(
      [&] { ops::quantize_rows(x, torch::zeros({1}), "int8"); },
      "every scale must be positive and finite");
  const auto a = torch::zeros({4, 8}, torch::kChar);
  expect_error(
      [&] {
        ops::qmatmul(
            a,
            torch::zeros({4, 7}, torch::kChar),
            torch::ones({4}),
            torch::ones({4}),
            std::nullopt,
            torch::kFloat);
      },
      "must be matrices with the same k");
  expect_error(
      [&] {
        ops::qmatmul(
            a,
            a.to(torch::kFloat8_e4m3fn),
            torch::ones({4}),
            torch::ones({4}),
            std::nullopt,
            torch::kFloat);
      },
      "must both be int8 or both float8_e4m3fn");
  expect_error(
      [&] {
        ops::qmatmul(
            a,
            a,
            torch::ones({3}),
            torch::ones({4}),
            std::nullopt,
            torch::kFloat);
      },
      "a_scale must hold 4 values");
  expect_error(
      [&] {
        ops::quant_linear(
            torch::randn({2, 9}),
            torch::randn({4, 8}),
            torch::ones({4}),
            std::nullopt,
            "int8");
      },
      "do not fit");
}

} // namespace
} // namespace qat
