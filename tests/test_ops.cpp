// The qat ops against ATen's own fake-quant ops (bit for bit), against a
// float64 reference for the granularities ATen lacks (per group, per token),
// and their error messages.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "ops/ops.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;
using testing::hard_values;

struct Range {
  int64_t qmin, qmax;
};
constexpr Range kRanges[] = {{-128, 127}, {0, 255}, {-8, 7}, {0, 15}};
constexpr int64_t kOddSizes[] = {1, 3, 7, 17, 33, 1023};
const torch::ScalarType kDtypes[] = {torch::kFloat, torch::kBFloat16};

TEST(FakeQuantAffine, PerTensorMatchesATenBitForBit) {
  uint64_t seed = 1;
  for (auto dtype : kDtypes) {
    for (int64_t n : kOddSizes) {
      for (Range r : kRanges) {
        for (float scale : {0.0173f, 0.5f, 3.0f}) {
          const int64_t zp = (r.qmin + r.qmax) / 3;
          const auto x = hard_values({n, 3}, scale, seed++).to(dtype);
          auto [y, mask] = ops::fake_quant_affine_cachemask(
              x,
              torch::tensor({scale}),
              torch::tensor({zp}, torch::kInt),
              std::nullopt,
              0,
              r.qmin,
              r.qmax);
          auto [y_aten, mask_aten] =
              at::fake_quantize_per_tensor_affine_cachemask(
                  x, scale, zp, r.qmin, r.qmax);
          ASSERT_TRUE(bitwise_equal(y, y_aten))
              << "n=" << n << " range [" << r.qmin << "," << r.qmax << "] "
              << dtype;
          ASSERT_TRUE(torch::equal(mask, mask_aten));
        }
      }
    }
  }
}

TEST(FakeQuantAffine, PerChannelMatchesATenBitForBitOnEveryAxis) {
  uint64_t seed = 100;
  for (auto dtype : kDtypes) {
    for (int64_t c : kOddSizes) {
      for (int64_t axis = 0; axis < 3; ++axis) {
        for (Range r : kRanges) {
          std::vector<int64_t> shape = {3, 5, 2};
          shape[axis] = c;
          const auto x =
              hard_values(shape, 0.05, seed++, /*finite_only=*/true).to(dtype);
          const auto scale = torch::rand({c}) * 0.1 + 0.001;
          const auto zp = torch::randint(r.qmin, r.qmax + 1, {c}, torch::kInt);
          auto [y, mask] = ops::fake_quant_affine_cachemask(
              x, scale, zp, axis, 0, r.qmin, r.qmax);
          auto [y_aten, mask_aten] =
              at::fake_quantize_per_channel_affine_cachemask(
                  x, scale, zp, axis, r.qmin, r.qmax);
          ASSERT_TRUE(bitwise_equal(y, y_aten))
              << "axis " << axis << " c=" << c << " " << dtype;
          ASSERT_TRUE(torch::equal(mask, mask_aten));
        }
      }
    }
  }
}

TEST(FakeQuantAffine, NanPropagatesAndInfSaturates) {
  const float inf = std::numeric_limits<float>::infinity();
  const auto x = torch::tensor({std::nanf(""), inf, -inf, 1e30f});
  auto [y, mask] = ops::fake_quant_affine_cachemask(
      x,
      torch::tensor({0.1f}),
      torch::tensor({0}, torch::kInt),
      std::nullopt,
      0,
      -128,
      127);
  EXPECT_TRUE(
      std::isnan(y[0].item<float>())); // ATen gives (qmin - zp) * scale here
  EXPECT_FLOAT_EQ(y[1].item<float>(), 12.7f);
  EXPECT_FLOAT_EQ(y[2].item<float>(), -12.8f);
  EXPECT_FLOAT_EQ(y[3].item<float>(), 12.7f);
  EXPECT_FALSE(mask.any().item<bool>());
  x.requires_grad_(true);
  ops::fake_quant_affine(
      x,
      torch::tensor({0.1f}),
      torch::tensor({0}, torch::kInt),
      std::nullopt,
      0,
      -128,
      127)
      .sum()
      .backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::zeros({4})));
}

TEST(FakeQuantAffine, StraightThroughGradientMatchesATen) {
  for (auto dtype : kDtypes) {
    const auto x0 =
        hard_values({64, 33}, 0.02, 7, /*finite_only=*/true).to(dtype);
    const auto dy = torch::randn({64, 33}).to(dtype);
    const auto scale = torch::rand({64}) * 0.05 + 0.01;
    const auto zp = torch::randint(-10, 10, {64}, torch::kInt);
    auto x = x0.clone().requires_grad_(true);
    ops::fake_quant_affine(x, scale, zp, 0, 0, -128, 127).backward(dy);
    auto x_aten = x0.clone().requires_grad_(true);
    at::fake_quantize_per_channel_affine(x_aten, scale, zp, 0, -128, 127)
        .backward(dy);
    EXPECT_TRUE(bitwise_equal(x.grad(), x_aten.grad())) << dtype;

    auto xt = x0.clone().requires_grad_(true);
    ops::fake_quant_affine(
        xt,
        torch::tensor({0.03f}),
        torch::tensor({3}, torch::kInt),
        std::nullopt,
        0,
        -8,
        7)
        .backward(dy);
    auto xt_aten = x0.clone().requires_grad_(true);
    at::fake_quantize_per_tensor_affine(xt_aten, 0.03f, 3, -8, 7).backward(dy);
    EXPECT_TRUE(bitwise_equal(xt.grad(), xt_aten.grad())) << dtype;
  }
}

// LSQ: the forward and dx bit for bit; scale and zero-point sums up to
// summation order.
TEST(FakeQuantLsq, GradientsMatchATenLearnableOps) {
  torch::manual_seed(3);
  for (Range r :
       {Range{-128, 127}, Range{0, 255}, Range{-8, 7}, Range{0, 15}}) {
    const auto x0 = torch::randn({40, 97}) * 0.3;
    const auto dy = torch::randn({40, 97});
    const double grad_factor = 1.0 / std::sqrt(97.0 * r.qmax);
    // Per tensor. ATen's backward rounds the zero point as trunc(zp + 0.5):
    // equal to the forward's rounding for non-negative zero points, which is
    // what this compares.
    {
      const float zp_value =
          static_cast<float>(std::max<int64_t>(r.qmin, 0) + 2);
      auto x = x0.clone().requires_grad_(true),
           s = torch::tensor({0.02f}, torch::requires_grad()),
           z = torch::tensor({zp_value}, torch::requires_grad());
      auto y = ops::fake_quant_lsq(
          x, s, z, std::nullopt, 0, r.qmin, r.qmax, grad_factor);
      y.backward(dy);
      auto xa = x0.clone().requires_grad_(true),
           sa = torch::tensor({0.02f}, torch::requires_grad()),
           za = torch::tensor({zp_value}, torch::requires_grad());
      auto ya = at::_fake_quantize_learnable_per_tensor_affine(
          xa, sa, za, r.qmin, r.qmax, grad_factor);
      ya.backward(dy);
      ASSERT_TRUE(bitwise_equal(y, ya));
      ASSERT_TRUE(bitwise_equal(x.grad(), xa.grad()));
      EXPECT_NEAR(
          s.grad().item<float>(),
          sa.grad().item<float>(),
          1e-4 * (1 + std::abs(sa.grad().item<float>())));
      EXPECT_NEAR(
          z.grad().item<float>(),
          za.grad().item<float>(),
          1e-4 * (1 + std::abs(za.grad().item<float>())));
    }
    // Per channel, along both axes.
    for (int64_t axis : {0, 1}) {
      const int64_t c = x0.size(axis);
      const auto s0 = torch::rand({c}) * 0.05 + 0.005;
      const auto z0 =
          torch::randint(r.qmin, r.qmax + 1, {c}).to(torch::kFloat) + 0.3;
      auto x = x0.clone().requires_grad_(true),
           s = s0.clone().requires_grad_(true),
           z = z0.clone().requires_grad_(true);
      ops::fake_quant_lsq(x, s, z, axis, 0, r.qmin, r.qmax, grad_factor)
          .backward(dy);
      auto xa = x0.clone().requires_grad_(true),
           sa = s0.clone().requires_grad_(true),
           za = z0.clone().requires_grad_(true);
      at::_fake_quantize_learnable_per_channel_affine(
          xa, sa, za, axis, r.qmin, r.qmax, grad_factor)
          .backward(dy);
      ASSERT_TRUE(bitwise_equal(x.grad(), xa.grad())) << "axis " << axis;
      ASSERT_TRUE(torch::allclose(s.grad(), sa.grad(), 1e-4, 1e-5))
          << s.grad() - sa.grad();
      ASSERT_TRUE(torch::allclose(z.grad(), za.grad(), 1e-4, 1e-5))
          << z.grad() - za.grad();
    }
  }
}

TEST(FakeQuantLsq, ParameterGradientsDoNotDependOnThreadCount) {
  const auto x = torch::randn({256, 512}) * 0.2, dy = torch::randn({256, 512});
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    auto s = torch::tensor({0.01f}, torch::requires_grad());
    ops::fake_quant_lsq(x, s, torch::zeros({1}), std::nullopt, 0, -8, 7, 0.01)
        .backward(dy);
    return s.grad();
  };
  const int saved = at::get_num_threads();
  const auto one = run(1), two = run(2);
  at::set_num_threads(saved);
  EXPECT_TRUE(bitwise_equal(one, two));
}

// Per group and per token have no ATen op: the reference is the formula in
// float64, q = clamp(round(x / s) + zp, qmin, qmax), x' = (q - zp) * s. Float64
// and ATen's float arithmetic (x * (1/s)) may round differently within a float
// ulp of a .5 tie; those elements (counted, a handful in a million) may differ
// by one code.
void expect_matches_float64(
    const torch::Tensor& x,
    const torch::Tensor& y,
    const torch::Tensor& scale_full,
    const torch::Tensor& zp_full,
    Range r) {
  const auto xd = x.to(torch::kDouble), sd = scale_full.to(torch::kDouble),
             zd = zp_full.to(torch::kDouble);
  const auto ratio = xd / sd;
  const auto q = torch::clamp(torch::round(ratio) + zd, r.qmin, r.qmax);
  const auto expected = ((q - zd) * sd).to(y.scalar_type());
  const auto near_tie = (ratio - ratio.floor() - 0.5).abs() < 1e-5;
  const auto exact = y.eq(expected) | near_tie;
  EXPECT_TRUE(exact.all().item<bool>())
      << (~exact).sum().item<int64_t>() << " elements differ";
  const auto code_diff =
      ((y.to(torch::kDouble) - expected.to(torch::kDouble)) / sd).abs();
  EXPECT_LE(code_diff.max().item<double>(), 1.0 + 1e-2);
  // Ties are rare in float32 data; bfloat16's 8-bit mantissas make exact ties
  // more common.
  EXPECT_LE(near_tie.sum().item<int64_t>(), 8 + x.numel() / 200);
}

TEST(FakeQuantAffine, PerGroupMatchesFloat64Reference) {
  torch::manual_seed(11);
  for (Range r : kRanges) {
    for (int64_t group : {1, 3, 32, 128}) {
      // Along the last axis, and along axis 0 (moved last internally and back).
      const auto x = torch::randn({17, 3 * 128}) * 0.5;
      const auto scale = torch::rand({17, 3 * 128 / group}) * 0.05 + 0.002;
      const auto zp = torch::randint(
          r.qmin, r.qmax + 1, {17, 3 * 128 / group}, torch::kInt);
      const auto y =
          ops::fake_quant_affine(x, scale, zp, -1, group, r.qmin, r.qmax);
      expect_matches_float64(
          x,
          y,
          scale.repeat_interleave(group, 1),
          zp.repeat_interleave(group, 1),
          r);

      const auto xt = x.t().contiguous();
      const auto yt = ops::fake_quant_affine(
          xt,
          scale.t().contiguous(),
          zp.t().contiguous(),
          0,
          group,
          r.qmin,
          r.qmax);
      expect_matches_float64(
          xt,
          yt,
          scale.repeat_interleave(group, 1).t(),
          zp.repeat_interleave(group, 1).t(),
          r);
    }
  }
}

TEST(FakeQuantAffine, PerTokenMatchesFloat64Reference) {
  torch::manual_seed(12);
  for (auto dtype : kDtypes) {
    const auto x = (torch::randn({4, 9, 64}) * 2).to(dtype);
    const auto scale = x.to(torch::kFloat).abs().amax(-1, true) / 127;
    const auto zp = torch::zeros_like(scale, torch::kInt);
    const auto y = ops::fake_quant_affine(x, scale, zp, -1, 64, -128, 127);
    expect_matches_float64(
        x, y, scale.expand_as(x), zp.expand_as(x), {-128, 127});
  }
}

TEST(FakeQuantAffine, MetaTensorsGiveShapesOnly) {
  const auto x = torch::empty({4, 8}, torch::kMeta);
  auto [y, mask] = ops::fake_quant_affine_cachemask(
      x,
      torch::empty({4}, torch::kMeta),
      torch::empty({4}, torch::TensorOptions(torch::kMeta).dtype(torch::kInt)),
      0,
      0,
      -128,
      127);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(mask.scalar_type(), torch::kBool);
  EXPECT_TRUE(y.is_meta());
}

// Every bad argument is refused with a message that names the problem.
TEST(FakeQuantAffine, BadArgumentsGiveClearErrors) {
  const auto x = torch::randn({4, 100});
  const auto zp4 = torch::zeros({4}, torch::kInt);
  auto expect_error = [](const std::function<void()>& call,
                         const std::string& words) {
    EXPECT_TRUE(testing::throws_with<c10::Error>(call, words));
  };
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x,
            torch::ones({4, 3}),
            torch::zeros({4, 3}, torch::kInt),
            1,
            32,
            -8,
            7);
      },
      "group_size 32 does not divide the size 100 of axis 1");
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x, torch::ones({5}), torch::zeros({5}, torch::kInt), 0, 0, -8, 7);
      },
      "needs a 1-D scale of 4 elements");
  expect_error(
      [&] { ops::fake_quant_affine(x, torch::ones({4}), zp4, 0, 0, 7, -8); },
      "must not be greater than quant_max");
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x, torch::tensor({1.f, 0.f, 1.f, 1.f}), zp4, 0, 0, -8, 7);
      },
      "scale[1] = 0");
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x, torch::ones({4}), torch::full({4}, 9, torch::kInt), 0, 0, -8, 7);
      },
      "outside the code range");
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x.to(torch::kDouble),
            torch::ones({1}),
            torch::zeros({1}, torch::kInt),
            std::nullopt,
            0,
            -8,
            7);
      },
      "input must be float32 or bfloat16");
  expect_error(
      [&] {
        ops::fake_quant_affine(
            x, torch::ones({1}), torch::zeros({1}), std::nullopt, 0, -8, 7);
      },
      "zero_point must be an integer tensor");
  expect_error(
      [&] {
        ops::fake_quant_fp8(x, torch::ones({1}), std::nullopt, 0, "e3m4");
      },
      "unknown FP8 format 'e3m4'");
}

} // namespace
} // namespace qat
