// CUDA kernels against the CPU implementation (itself tested against ATen and
// the reference kernels): the same bits for every output but the LSQ parameter
// sums, whose order differs. Reported as SKIPPED where no GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/ops.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;
using testing::hard_values;

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available())
      GTEST_SKIP() << "no CUDA device on this machine";
  }
};

TEST_F(Cuda, AffineForwardAndMaskMatchCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t n : {1, 7, 33, 1023, 4096}) {
      const auto x = hard_values({n, 9}, 0.05, n).to(dtype);
      struct Case {
        std::optional<int64_t> axis;
        int64_t group;
        torch::Tensor scale;
      };
      const Case cases[] = {
          {std::nullopt, 0, torch::tensor({0.05f})},
          {0, 0, torch::rand({n}) * 0.1 + 0.01},
          {1, 0, torch::rand({9}) * 0.1 + 0.01},
          {1, 3, torch::rand({n, 3}) * 0.1 + 0.01},
          {0, n, torch::rand({1, 9}) * 0.1 + 0.01}};
      for (const Case& c : cases) {
        const auto zp = torch::randint(-20, 20, c.scale.sizes(), torch::kInt);
        auto [y, m] = ops::fake_quant_affine_cachemask(
            x, c.scale, zp, c.axis, c.group, -128, 127);
        auto [yg, mg] = ops::fake_quant_affine_cachemask(
            x.to(gpu), c.scale.to(gpu), zp.to(gpu), c.axis, c.group, -128, 127);
        ASSERT_TRUE(bitwise_equal(y, yg.cpu()))
            << "n=" << n << " group " << c.group;
        ASSERT_TRUE(torch::equal(m, mg.cpu()));
      }
    }
  }
}

TEST_F(Cuda, Fp8MatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  const auto x = hard_values({257, 64}, 3.0, 9);
  const auto s = torch::rand({257, 2}) + 0.1;
  for (const char* format : {"e4m3fn", "e5m2"}) {
    auto [y, m] = ops::fake_quant_fp8_cachemask(x, s, -1, 32, format);
    auto [yg, mg] =
        ops::fake_quant_fp8_cachemask(x.to(gpu), s.to(gpu), -1, 32, format);
    EXPECT_TRUE(bitwise_equal(y, yg.cpu())) << format;
    EXPECT_TRUE(torch::equal(m, mg.cpu()));
  }
}

TEST_F(Cuda, BackwardMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  const auto x0 = torch::randn({128, 300}) * 0.2, dy = torch::randn({128, 300});
  const auto s0 = torch::rand({128}) * 0.05 + 0.01,
             z0 = torch::randint(-3, 3, {128}).to(torch::kFloat);
  auto x = x0.clone().requires_grad_(true), s = s0.clone().requires_grad_(true),
       z = z0.clone().requires_grad_(true);
  ops::fake_quant_lsq(x, s, z, 0, 0, -8, 7, 0.05).backward(dy);
  auto xg = x0.to(gpu).requires_grad_(true),
       sg = s0.to(gpu).requires_grad_(true),
       zg = z0.to(gpu).requires_grad_(true);
  ops::fake_quant_lsq(xg, sg, zg, 0, 0, -8, 7, 0.05).backward(dy.to(gpu));
  EXPECT_TRUE(bitwise_equal(x.grad(), xg.grad().cpu()));
  EXPECT_TRUE(torch::allclose(s.grad(), sg.grad().cpu(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(z.grad(), zg.grad().cpu(), 1e-5, 1e-6));

  auto xs = x0.clone().requires_grad_(true);
  ops::fake_quant_affine(xs, s0, z0.to(torch::kInt), 0, 0, -8, 7).backward(dy);
  auto xsg = x0.to(gpu).requires_grad_(true);
  ops::fake_quant_affine(
      xsg, s0.to(gpu), z0.to(torch::kInt).to(gpu), 0, 0, -8, 7)
      .backward(dy.to(gpu));
  EXPECT_TRUE(bitwise_equal(xs.grad(), xsg.grad().cpu()));
}

TEST_F(Cuda, GgufMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t rows : {1, 7, 1023}) {
      const auto x = hard_values({rows, 96}, 0.05, rows).to(dtype);
      for (const char* type : {"q8_0", "q4_0"}) {
        auto [y, m] = ops::fake_quant_gguf_cachemask(x, type);
        auto [yg, mg] = ops::fake_quant_gguf_cachemask(x.to(gpu), type);
        ASSERT_TRUE(bitwise_equal(y, yg.cpu())) << type << " rows=" << rows;
        ASSERT_TRUE(torch::equal(m, mg.cpu())) << type;
      }
    }
  }
}

} // namespace
} // namespace qat
