// FP8 e4m3fn / e5m2 against c10's own Float8 types: every code, random floats
// of every magnitude, and scales per tensor, per channel and per block.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/quant_math.h"
#include "ops/ops.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using kernels::Fp8Format;
using testing::bitwise_equal;

struct Format {
  const char* name;
  torch::ScalarType dtype;
  float max;
};
const Format kFormats[] = {
    {"e4m3fn", torch::kFloat8_e4m3fn, 448.0f},
    {"e5m2", torch::kFloat8_e5m2, 57344.0f}};

// c10's conversion saturates only when asked to (a clamp first), as torchao and
// vLLM do.
torch::Tensor c10_fake_quant(
    const torch::Tensor& x,
    const torch::Tensor& scale,
    const Format& f) {
  return (x / scale).clamp(-f.max, f.max).to(f.dtype).to(torch::kFloat) * scale;
}

// Finite floats with exponents from below the FP8 subnormals to above the
// format maximum.
torch::Tensor wide_range(at::IntArrayRef sizes, uint64_t seed) {
  torch::manual_seed(seed);
  const auto exponent = torch::randint(-24, 18, sizes).to(torch::kFloat);
  return torch::randn(sizes) * torch::pow(2.0, exponent);
}

TEST(Fp8, EveryCodeDecodesLikeC10) {
  const auto codes = torch::arange(256, torch::kInt).to(torch::kUInt8);
  for (const Format& f : kFormats) {
    const auto c10_values = codes.view(f.dtype).to(torch::kFloat);
    for (int code = 0; code < 256; ++code) {
      const float ours = f.dtype == torch::kFloat8_e4m3fn
          ? kernels::fp8_decode<Fp8Format::e4m3fn>(static_cast<uint8_t>(code))
          : kernels::fp8_decode<Fp8Format::e5m2>(static_cast<uint8_t>(code));
      const float theirs = c10_values[code].item<float>();
      if (std::isnan(theirs)) {
        EXPECT_TRUE(std::isnan(ours)) << f.name << " code " << code;
      } else {
        EXPECT_EQ(kernels::float_bits(ours), kernels::float_bits(theirs))
            << f.name << " code " << code;
      }
    }
  }
}

TEST(Fp8, RandomFloatsConvertLikeC10Casts) {
  const auto x = wide_range({1 << 20}, 21);
  for (const Format& f : kFormats) {
    const auto one = torch::ones({1});
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_fp8(x, one, std::nullopt, 0, f.name),
        c10_fake_quant(x, one, f)))
        << f.name;
    // Inside the range no clamp is needed: the plain cast agrees too.
    const auto inside = x.clamp(-f.max, f.max);
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_fp8(inside, one, std::nullopt, 0, f.name),
        inside.to(f.dtype).to(torch::kFloat)));
  }
}

TEST(Fp8, ScalesPerTensorChannelAndBlock) {
  for (const Format& f : kFormats) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const auto x = wide_range({33, 96}, 5).to(dtype);
      const auto xf = x.to(torch::kFloat);
      const auto s_tensor = torch::tensor({0.37f});
      EXPECT_TRUE(bitwise_equal(
          ops::fake_quant_fp8(x, s_tensor, std::nullopt, 0, f.name),
          c10_fake_quant(xf, s_tensor, f).to(dtype)));
      const auto s_channel = torch::rand({33}) + 0.01;
      EXPECT_TRUE(bitwise_equal(
          ops::fake_quant_fp8(x, s_channel, 0, 0, f.name),
          c10_fake_quant(xf, s_channel.unsqueeze(1), f).to(dtype)));
      const auto s_block = torch::rand({33, 3}) * 4 + 0.01;
      EXPECT_TRUE(bitwise_equal(
          ops::fake_quant_fp8(x, s_block, -1, 32, f.name),
          c10_fake_quant(xf, s_block.repeat_interleave(32, 1), f).to(dtype)));
    }
  }
}

TEST(Fp8, SaturationAndSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const auto x =
      torch::tensor({1000.0f, -1e6f, inf, -inf, std::nanf(""), 448.0f, 464.0f});
  auto [y, mask] = ops::fake_quant_fp8_cachemask(
      x, torch::ones({1}), std::nullopt, 0, "e4m3fn");
  EXPECT_EQ(y[0].item<float>(), 448.0f);
  EXPECT_EQ(y[1].item<float>(), -448.0f);
  EXPECT_EQ(y[2].item<float>(), 448.0f);
  EXPECT_EQ(y[3].item<float>(), -448.0f);
  EXPECT_TRUE(std::isnan(y[4].item<float>()));
  EXPECT_EQ(y[5].item<float>(), 448.0f);
  EXPECT_EQ(y[6].item<float>(), 448.0f);
  EXPECT_TRUE(torch::equal(
      mask, torch::tensor({false, false, false, false, false, true, false})));
}

TEST(Fp8, GradientIsStraightThroughInsideTheRange) {
  const auto x =
      torch::tensor({1.0f, -3.0f, 500.0f, -0.001f}, torch::requires_grad());
  const auto dy = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f});
  ops::fake_quant_fp8(x, torch::ones({1}), std::nullopt, 0, "e4m3fn")
      .backward(dy);
  EXPECT_TRUE(torch::equal(x.grad(), torch::tensor({1.0f, 2.0f, 0.0f, 4.0f})));
}

} // namespace
} // namespace qat
