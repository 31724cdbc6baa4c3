// CUDA kernels against the CPU implementation (itself tested against ATen and
// the reference kernels): the same bits for every output but the LSQ parameter
// sums, whose order differs. Reported as SKIPPED where no GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/ops.h"
#include "qat/modules/linear.h"
#include "qat/prepare.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;
using testing::hard_values;

// Equal bits, except that a NaN only has to meet a NaN: the x86 CPU keeps a
// NaN operand's payload and sign, the GPU's arithmetic returns its canonical
// NaN (NaN propagation is the contract, not the payload).
::testing::AssertionResult same_bits_or_both_nan(
    const torch::Tensor& cpu,
    const torch::Tensor& gpu) {
  const auto nan = cpu.isnan();
  if (!torch::equal(nan, gpu.isnan()))
    return ::testing::AssertionFailure() << "NaN at different places";
  return bitwise_equal(cpu.masked_fill(nan, 0), gpu.masked_fill(nan, 0));
}

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

// A block holding an infinity has an infinite scale and NaN values (0 * inf),
// which the CPU writes as its default NaN (sign set) and the GPU as its own.
TEST_F(Cuda, GgufMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t rows : {1, 7, 1023}) {
      const auto x = hard_values({rows, 96}, 0.05, rows).to(dtype);
      for (const char* type : {"q8_0", "q4_0"}) {
        auto [y, m] = ops::fake_quant_gguf_cachemask(x, type);
        auto [yg, mg] = ops::fake_quant_gguf_cachemask(x.to(gpu), type);
        ASSERT_TRUE(same_bits_or_both_nan(y, yg.cpu()))
            << type << " rows=" << rows;
        ASSERT_TRUE(torch::equal(m, mg.cpu())) << type;
      }
    }
  }
}

// Sizes where the grid-stride loops wrap, rows of 4096 (the 16-byte pack
// path), and inputs that start off a 16-byte boundary (the element path).
TEST_F(Cuda, LargeAndMisalignedTensorsMatchCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto x = hard_values({4096, 4096}, 0.02, 11).to(dtype);
    const auto scale = torch::rand({4096}) * 0.05 + 0.01;
    const auto zp = torch::randint(-8, 8, {4096}, torch::kInt);
    auto [y, m] =
        ops::fake_quant_affine_cachemask(x, scale, zp, 0, 0, -128, 127);
    auto [yg, mg] = ops::fake_quant_affine_cachemask(
        x.to(gpu), scale.to(gpu), zp.to(gpu), 0, 0, -128, 127);
    ASSERT_TRUE(bitwise_equal(y, yg.cpu()));
    ASSERT_TRUE(torch::equal(m, mg.cpu()));

    const auto sg = torch::rand({4096, 32}) * 0.05 + 0.01;
    auto [yf, mf] = ops::fake_quant_fp8_cachemask(x, sg, -1, 128, "e4m3fn");
    auto [yfg, mfg] =
        ops::fake_quant_fp8_cachemask(x.to(gpu), sg.to(gpu), -1, 128, "e4m3fn");
    ASSERT_TRUE(bitwise_equal(yf, yfg.cpu()));
    ASSERT_TRUE(torch::equal(mf, mfg.cpu()));

    // One element off the allocation's start: rows of 16384 that would take
    // the pack path if they were aligned.
    const auto tail = x.view(-1).narrow(0, 1, 1 << 20);
    const auto s1 = torch::tensor({0.03f}),
               z1 = torch::tensor({3}, torch::kInt);
    auto [yt, mt] =
        ops::fake_quant_affine_cachemask(tail, s1, z1, {}, 0, -8, 7);
    auto [ytg, mtg] = ops::fake_quant_affine_cachemask(
        x.to(gpu).view(-1).narrow(0, 1, 1 << 20),
        s1.to(gpu),
        z1.to(gpu),
        {},
        0,
        -8,
        7);
    ASSERT_TRUE(bitwise_equal(yt, ytg.cpu()));
    ASSERT_TRUE(torch::equal(mt, mtg.cpu()));

    const auto dy = torch::randn({1000003}).to(dtype);
    const auto keep = torch::rand({1000003}) > 0.3;
    EXPECT_TRUE(bitwise_equal(
        ops::mask_backward(dy, keep),
        ops::mask_backward(dy.to(gpu), keep.to(gpu)).cpu()));
    EXPECT_TRUE(bitwise_equal(
        ops::mask_backward(
            dy.narrow(0, 1, 1000001), keep.narrow(0, 1, 1000001)),
        ops::mask_backward(
            dy.to(gpu).narrow(0, 1, 1000001),
            keep.to(gpu).narrow(0, 1, 1000001))
            .cpu()));
  }
}

TEST_F(Cuda, NanPropagatesAsOnCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto x = hard_values({64, 256}, 0.05, 12);
    x.view(-1).index_put_({torch::randperm(x.numel()).slice(0, 0, 500)}, NAN);
    x.view(-1)[0] = -NAN;
    x = x.to(dtype);
    const auto scale = torch::rand({64}) * 0.05 + 0.01;
    const auto zp = torch::randint(-8, 8, {64}, torch::kInt);
    auto [y, m] = ops::fake_quant_affine_cachemask(x, scale, zp, 0, 0, -8, 7);
    auto [yg, mg] = ops::fake_quant_affine_cachemask(
        x.to(gpu), scale.to(gpu), zp.to(gpu), 0, 0, -8, 7);
    EXPECT_TRUE(same_bits_or_both_nan(y, yg.cpu()));
    EXPECT_TRUE(torch::equal(m, mg.cpu()));
    auto [yf, mf] = ops::fake_quant_fp8_cachemask(x, scale, 0, 0, "e4m3fn");
    auto [yfg, mfg] =
        ops::fake_quant_fp8_cachemask(x.to(gpu), scale.to(gpu), 0, 0, "e4m3fn");
    EXPECT_TRUE(same_bits_or_both_nan(yf, yfg.cpu()));
    EXPECT_TRUE(torch::equal(mf, mfg.cpu()));
    EXPECT_TRUE(same_bits_or_both_nan(
        ops::mask_backward(x, m), ops::mask_backward(x.to(gpu), mg).cpu()));
  }
}

// The device's FP8 conversion instructions against the CPU's bit-level codec:
// every bfloat16 bit pattern (the rounding ties and subnormal edges of both
// formats lie on that grid, and NaN and inf too) and a million random floats
// over 42 binades, at scale 1 and at an awkward scale.
TEST_F(Cuda, Fp8CodecMatchesCpuOnEveryBfloat16AndRandomFloats) {
  const torch::Device gpu(torch::kCUDA);
  std::vector<int32_t> bits(1 << 16);
  for (uint32_t i = 0; i < bits.size(); ++i)
    bits[i] = static_cast<int32_t>(i << 16);
  torch::manual_seed(13);
  const auto x = torch::cat(
      {torch::tensor(bits).view(torch::kFloat),
       torch::randn({1 << 20}) *
           torch::pow(2.0, torch::randint(-24, 18, {1 << 20}))});
  for (const char* format : {"e4m3fn", "e5m2"}) {
    for (float s : {1.0f, 0.37f}) {
      const auto scale = torch::tensor({s});
      auto [y, m] = ops::fake_quant_fp8_cachemask(x, scale, {}, 0, format);
      auto [yg, mg] = ops::fake_quant_fp8_cachemask(
          x.to(gpu), scale.to(gpu), {}, 0, format);
      EXPECT_TRUE(same_bits_or_both_nan(y, yg.cpu())) << format << " " << s;
      EXPECT_TRUE(torch::equal(m, mg.cpu())) << format << " " << s;
    }
  }
}

// A QuantLinear forward and backward through autograd and the CUDA ops
// against the same on CPU, from the same quantizer state: the fake-quantized
// weight and input are the same bits; the output and the gradients differ
// only by the matmuls' summation order. (Observers do not give the same state
// on both: ATen's CUDA division by a scalar multiplies by its reciprocal, so
// a scale such as amax / 127.5 can differ by an ulp. Hence calibration on the
// CPU, copied over, and no dynamic activation quantizers here.)
TEST_F(Cuda, QuantLinearForwardBackwardMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  const auto fp8 = QuantSpec().format(NumberFormat::fp8_e4m3);
  const auto w4 =
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0);
  const std::pair<const char*, LayerQuantSpecs> cases[] = {
      {"w8a8_int8_static", preset("w8a8_int8_static")},
      {"w4a16_g128", preset("w4a16_g128")},
      {"fp8 per-channel weight, per-tensor input",
       LayerQuantSpecs{
           FakeQuantizerOptions(
               QuantSpec(fp8).granularity(Granularity::per_channel).axis(0)),
           FakeQuantizerOptions(fp8),
           std::nullopt}},
      {"w4 lsq, a8 static",
       LayerQuantSpecs{
           FakeQuantizerOptions(w4).estimator(Estimator::lsq),
           FakeQuantizerOptions(QuantSpec()),
           std::nullopt}}};
  for (const auto& [name, specs] : cases) {
    torch::manual_seed(5);
    torch::nn::Linear fc(256, 96);
    auto on_cpu = QuantLinear::from_float(fc, specs);
    auto on_gpu = QuantLinear::from_float(fc, specs);
    const auto x = torch::randn({4, 7, 256}), dy = torch::randn({4, 7, 96});
    {
      torch::NoGradGuard no_grad;
      on_cpu(x);
      set_observers(*on_cpu, false);
      on_gpu->to(gpu);
      auto gpu_buffers = on_gpu->named_buffers();
      for (const auto& b : on_cpu->named_buffers())
        gpu_buffers[b.key()].set_data(b.value().to(gpu));
      auto gpu_params = on_gpu->named_parameters();
      for (const auto& p : on_cpu->named_parameters())
        gpu_params[p.key()].set_data(p.value().to(gpu));
    }
    auto xc = x.clone().requires_grad_(true);
    auto xg = x.to(gpu).requires_grad_(true);
    const auto y = on_cpu(xc);
    y.backward(dy);
    const auto yg = on_gpu(xg);
    yg.backward(dy.to(gpu));
    EXPECT_TRUE(torch::allclose(y, yg.cpu(), 1e-4, 1e-5)) << name;
    EXPECT_TRUE(torch::allclose(xc.grad(), xg.grad().cpu(), 1e-4, 1e-5))
        << name;
    const auto cpu_params = on_cpu->named_parameters();
    const auto gpu_params = on_gpu->named_parameters();
    ASSERT_EQ(cpu_params.size(), gpu_params.size());
    for (const auto& item : cpu_params) {
      const auto& grad = item.value().grad();
      ASSERT_TRUE(grad.defined()) << name << " " << item.key();
      EXPECT_TRUE(torch::allclose(
          grad, gpu_params[item.key()].grad().cpu(), 1e-4, 1e-5))
          << name << " " << item.key();
    }
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(bitwise_equal(
        on_cpu->effective_weight(on_cpu->weight),
        on_gpu->effective_weight(on_gpu->weight).cpu()))
        << name;
    EXPECT_TRUE(bitwise_equal(
        LayerQuantizers::apply(on_cpu->quantizers.input, x),
        LayerQuantizers::apply(on_gpu->quantizers.input, x.to(gpu)).cpu()))
        << name;
  }
}

} // namespace
} // namespace qat
