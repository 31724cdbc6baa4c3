// CUDA kernels against the CPU implementation (itself tested against ATen and
// the reference kernels): the same bits for every output but the LSQ parameter
// sums, whose order differs. Reported as SKIPPED where no GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <cstdio>

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

// NVFP4 / MXFP4 / MXFP8 with scales from each block (and NVFP4's global
// scale from the tensor, or given): values (NaN as NaN) and masks as on the
// CPU, with gradients through the mask.
TEST_F(Cuda, MicroscaleMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t rows : {1, 7, 1023}) {
      const auto x = hard_values({rows, 96}, 0.05, rows).to(dtype);
      for (const char* format : {"nvfp4", "mxfp4", "mxfp8"}) {
        auto [y, m] = ops::fake_quant_microscale_cachemask(x, format, {});
        auto [yg, mg] =
            ops::fake_quant_microscale_cachemask(x.to(gpu), format, {});
        ASSERT_TRUE(same_bits_or_both_nan(y, yg.cpu()))
            << format << " rows=" << rows;
        ASSERT_TRUE(torch::equal(m, mg.cpu())) << format;
      }
      const auto g = torch::full({1}, 1234.5f);
      EXPECT_TRUE(same_bits_or_both_nan(
          ops::fake_quant_microscale(x, "nvfp4", g),
          ops::fake_quant_microscale(x.to(gpu), "nvfp4", g.to(gpu)).cpu()));
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

// ---------------------------------------------------------------------------------------------
// Simulated matmuls: the CUDA row quantizer, the cuBLASLt GEMMs with their
// epilogues, and QuantLinear on them, against the CPU reference
// (kernels/ref/qmatmul_ref.h).
// ---------------------------------------------------------------------------------------------

constexpr int64_t kEdgeSizes[] = {1, 7, 16, 33, 64, 129};

// Codes, row scales and masks: the same bits, dynamic and given scales, odd
// and aligned row lengths (the 16-byte path and the element path). FP8 inputs
// are finite: a NaN code's sign bit is the conversion instruction's choice.
TEST_F(Cuda, QuantizeRowsMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t rows : {1, 7, 129}) {
      for (int64_t cols : {1, 7, 16, 33, 64, 129, 4096}) {
        for (const char* format : {"int8", "e4m3fn"}) {
          const bool fp8 = std::string(format) == "e4m3fn";
          const auto x =
              hard_values({rows, cols}, 0.05, rows * cols, fp8).to(dtype);
          const auto per_row = torch::rand({rows}) * 0.02 + 0.001;
          const std::optional<torch::Tensor> scales[] = {
              std::nullopt, per_row, per_row.slice(0, 0, 1)};
          for (const auto& scale : scales) {
            auto [c, s, m] = ops::quantize_rows(x, scale, format);
            auto [cg, sg, mg] = ops::quantize_rows(
                x.to(gpu),
                scale ? std::optional<torch::Tensor>(scale->to(gpu))
                      : std::nullopt,
                format);
            ASSERT_TRUE(bitwise_equal(c, cg.cpu()))
                << format << " " << rows << "x" << cols;
            ASSERT_TRUE(bitwise_equal(s, sg.cpu())) << format;
            ASSERT_TRUE(torch::equal(m, mg.cpu())) << format;
          }
        }
      }
    }
  }
}

// The int32 accumulators equal the reference's exactly: with unit scales and
// no bias the output is the sum itself (|sum| < 2^24), over every M, K, N in
// kEdgeSizes (padding for cuBLASLt's shape rules included); with scales and a
// bias, the epilogue gives the reference's bits in float32 and bfloat16.
TEST_F(Cuda, Int8MatmulAccumulatorsEqualTheReference) {
  const torch::Device gpu(torch::kCUDA);
  torch::manual_seed(21);
  for (int64_t m : kEdgeSizes) {
    for (int64_t k : kEdgeSizes) {
      for (int64_t n : kEdgeSizes) {
        const auto a = torch::randint(-128, 128, {m, k}).to(torch::kChar);
        const auto b = torch::randint(-128, 128, {n, k}).to(torch::kChar);
        const auto ones_m = torch::ones({m}), ones_n = torch::ones({n});
        const auto sums =
            ops::qmatmul(a, b, ones_m, ones_n, std::nullopt, torch::kFloat);
        const auto sums_gpu = ops::qmatmul(
            a.to(gpu),
            b.to(gpu),
            ones_m.to(gpu),
            ones_n.to(gpu),
            std::nullopt,
            torch::kFloat);
        ASSERT_TRUE(bitwise_equal(sums, sums_gpu.cpu()))
            << m << "x" << k << "x" << n;
        const auto sa = torch::rand({m}) * 0.01, sb = torch::rand({n}) * 0.01;
        const auto bias = torch::randn({n});
        for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
          const auto y = ops::qmatmul(a, b, sa, sb, bias, dtype);
          const auto yg = ops::qmatmul(
              a.to(gpu),
              b.to(gpu),
              sa.to(gpu),
              sb.to(gpu),
              bias.to(gpu),
              dtype);
          ASSERT_TRUE(bitwise_equal(y, yg.cpu()))
              << m << "x" << k << "x" << n << " " << dtype;
        }
      }
    }
  }
}

// FP8 e4m3 on the tensor cores. Exact where the arithmetic is: small integers
// (|sum| < 2^11) with power-of-two scales give the reference's float32 bits,
// and bf16 output within one bf16 rounding of it. Otherwise the error budget:
//   |out - ref| <= 2^-12 * ref_abs  (+ 2^-8 (|ref| + |bias|) for bf16 output)
// with ref_abs = a_scale b_scale sum_k |a_k b_k| + |bias|: products of two
// e4m3 values are exact, so only the summation differs, and Hopper's FP8
// tensor cores keep about 14 bits within a block of k before promoting to
// float32 (use_fast_accum = false). For a bf16 output the output is rounded
// to bf16 and so is the bias, which _scaled_mm's fused epilogue takes in bf16
// (half an ulp each: 2^-8 relative).
TEST_F(Cuda, Fp8MatmulWithinItsBudget) {
  const torch::Device gpu(torch::kCUDA);
  torch::manual_seed(22);
  for (int64_t m : kEdgeSizes) {
    for (int64_t k : kEdgeSizes) {
      for (int64_t n : kEdgeSizes) {
        const auto a = torch::randint(-4, 5, {m, k}).to(torch::kFloat8_e4m3fn);
        const auto b = torch::randint(-4, 5, {n, k}).to(torch::kFloat8_e4m3fn);
        const auto sa =
            torch::exp2(torch::randint(-3, 4, {m})).to(torch::kFloat);
        const auto sb =
            torch::exp2(torch::randint(-3, 4, {n})).to(torch::kFloat);
        const auto bias = torch::randint(-4, 5, {n}).to(torch::kFloat);
        const auto ref = ops::qmatmul(a, b, sa, sb, bias, torch::kFloat);
        const auto on_gpu = [&](torch::ScalarType dtype) {
          return ops::qmatmul(
                     a.to(gpu),
                     b.to(gpu),
                     sa.to(gpu),
                     sb.to(gpu),
                     bias.to(gpu),
                     dtype)
              .cpu()
              .to(torch::kFloat);
        };
        EXPECT_TRUE(bitwise_equal(ref, on_gpu(torch::kFloat)))
            << m << "x" << k << "x" << n;
        EXPECT_TRUE(((on_gpu(torch::kBFloat16) - ref).abs() <= ref.abs() / 256)
                        .all()
                        .item<bool>())
            << m << "x" << k << "x" << n;
      }
    }
  }
  double worst = 0.0;
  for (auto [m, k, n] :
       {std::array<int64_t, 3>{33, 129, 64},
        std::array<int64_t, 3>{7, 1024, 33},
        std::array<int64_t, 3>{256, 4096, 512}}) {
    auto [a, sa, ma] =
        ops::quantize_rows(torch::randn({m, k}) * 3, std::nullopt, "e4m3fn");
    auto [b, sb, mb] =
        ops::quantize_rows(torch::randn({n, k}) * 0.02, std::nullopt, "e4m3fn");
    const auto bias = torch::randn({n});
    const auto ref = ops::qmatmul(a, b, sa, sb, bias, torch::kFloat);
    const auto ref_abs =
        a.to(torch::kFloat).abs().mm(b.to(torch::kFloat).abs().t()) *
            sa.unsqueeze(1) * sb +
        bias.abs();
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const auto out =
          ops::qmatmul(
              a.to(gpu), b.to(gpu), sa.to(gpu), sb.to(gpu), bias.to(gpu), dtype)
              .cpu()
              .to(torch::kFloat);
      const auto rounding = dtype == torch::kBFloat16
          ? (ref.abs() + bias.abs()) / 256
          : torch::zeros_like(ref);
      const auto err = (out - ref).abs() - rounding;
      EXPECT_TRUE((err <= ref_abs / 4096).all().item<bool>())
          << m << "x" << k << "x" << n << " " << dtype << ": worst "
          << (err / ref_abs).max().item<double>() << " of ref_abs";
      worst = std::max(worst, (err / ref_abs).max().item<double>());
    }
  }
  std::printf(
      "FP8 e4m3 worst error beyond output rounding: %.3g of ref_abs\n", worst);
}

// One QAT training step (forward, backward, SGD) of a QuantLinear on CUDA,
// where it runs quant_linear on the tensor cores, against the same step on the
// CPU, where it takes the fake-quant path. Weight scales are observed on the
// CPU and copied (see QuantLinearForwardBackwardMatchesCpu); the dynamic
// per-token input scales are the same bits on both (tested above). The
// outputs differ by summation alone: within float32 rounding for int8 (exact
// int32 sums; the CPU's float32 sum of 256 terms is within 256 * 2^-24 of
// sum |x w|), within the FP8 tensor cores' budget of Fp8MatmulWithinItsBudget
// (2^-12 of sum |x w| + |b|) for e4m3. The gradients follow from the outputs
// (the loss's gradient is linear in them), so they get the same relative
// error against their largest element, with a 4x margin; each SGD update is
// 0.1 times its gradient.
TEST_F(Cuda, QuantLinearTrainingStepMatchesCpu) {
  const torch::Device gpu(torch::kCUDA);
  const auto w4 =
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0);
  const auto int8_tokens =
      QuantSpec().granularity(Granularity::per_token).dynamic(true);
  struct Case {
    const char* name;
    LayerQuantSpecs specs;
    double budget; // of the output's error, relative to sum |x w| + |b|
  };
  const Case cases[] = {
      {"w8a8_int8", preset("w8a8_int8"), 1.0 / 65536},
      {"fp8_e4m3", preset("fp8_e4m3"), 1.0 / 4096},
      {"w4 lsq, a8 per token",
       LayerQuantSpecs{
           FakeQuantizerOptions(w4).estimator(Estimator::lsq),
           FakeQuantizerOptions(int8_tokens),
           std::nullopt},
       1.0 / 65536}};
  // max |a - b| <= tol * max |a| (+ 1e-12 for all-zero tensors).
  const auto near =
      [](const torch::Tensor& a, const torch::Tensor& b, double tol) {
        const double err = (a - b.cpu()).abs().max().item<double>();
        const double scale = a.abs().max().item<double>();
        if (err <= tol * scale + 1e-12)
          return ::testing::AssertionSuccess();
        return ::testing::AssertionFailure()
            << "max error " << err << " = " << err / scale
            << " of the largest element, budget " << tol;
      };
  for (const auto& [name, specs, budget] : cases) {
    torch::manual_seed(7);
    torch::nn::Linear fc(256, 96);
    auto on_cpu = QuantLinear::from_float(fc, specs);
    auto on_gpu = QuantLinear::from_float(fc, specs);
    const auto x = torch::randn({4, 7, 256}), target = torch::randn({4, 7, 96});
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
    torch::optim::SGD sgd_cpu(on_cpu->parameters(), 0.1);
    torch::optim::SGD sgd_gpu(on_gpu->parameters(), 0.1);
    auto xc = x.clone().requires_grad_(true);
    auto xg = x.to(gpu).requires_grad_(true);
    const auto yc = on_cpu(xc);
    const auto yg = on_gpu(xg);
    ASSERT_NE(
        yg.grad_fn()->name().find("QuantLinearFunction"), std::string::npos)
        << name << ": " << yg.grad_fn()->name();
    const auto loss_c = torch::mse_loss(yc, target);
    const auto loss_g = torch::mse_loss(yg, target.to(gpu));
    loss_c.backward();
    loss_g.backward();
    sgd_cpu.step();
    sgd_gpu.step();
    const auto ref_abs =
        x.abs().matmul(fc->weight.abs().t()) + fc->bias.abs() + 1e-6;
    EXPECT_TRUE(((yc - yg.cpu()).abs() <= budget * ref_abs).all().item<bool>())
        << name << ": worst "
        << ((yc - yg.cpu()).abs() / ref_abs).max().item<double>()
        << " of sum |x w| + |b|";
    const double tol =
        4 * budget * (ref_abs / yc.abs().max()).max().item<double>();
    EXPECT_NEAR(
        loss_c.item<double>(),
        loss_g.item<double>(),
        1e-6 + tol * loss_c.item<double>())
        << name;
    EXPECT_TRUE(near(xc.grad(), xg.grad(), std::max(tol, 1e-4))) << name;
    const auto gpu_params = on_gpu->named_parameters();
    for (const auto& p : on_cpu->named_parameters()) {
      const auto& pg = gpu_params[p.key()];
      EXPECT_TRUE(near(p.value().grad(), pg.grad(), std::max(tol, 1e-4)))
          << name << " " << p.key();
      EXPECT_TRUE(torch::allclose(
          p.value(),
          pg.cpu(),
          1e-6,
          1e-7 +
              0.1 * std::max(tol, 1e-4) *
                  p.value().grad().abs().max().item<double>()))
          << name << " " << p.key();
    }
  }
}

// Under bf16 autocast the layer returns bf16 (as a Linear does there), close
// to its float32 result, and its gradients reach the float32 parameters.
TEST_F(Cuda, QuantLinearUnderBf16Autocast) {
  const torch::Device gpu(torch::kCUDA);
  torch::manual_seed(9);
  torch::nn::Linear fc(128, 64);
  auto layer = QuantLinear::from_float(fc, preset("w8a8_int8"));
  layer->to(gpu);
  const auto x = torch::randn({16, 128}, gpu);
  const auto y32 = layer(x);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  const auto y16 = layer(x);
  at::autocast::set_autocast_enabled(at::kCUDA, false);
  at::autocast::clear_cache();
  EXPECT_EQ(y16.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(y16.to(torch::kFloat), y32, 2e-2, 2e-2));
  y16.to(torch::kFloat).sum().backward();
  EXPECT_EQ(layer->weight.grad().scalar_type(), torch::kFloat);
  EXPECT_EQ(layer->bias.grad().scalar_type(), torch::kFloat);
}

} // namespace
} // namespace qat
