// Number formats against independent references: FP8 e4m3fn / e5m2 against
// c10's own Float8 types (every code, random floats of every magnitude, scales
// per tensor, channel and block), the half conversion against c10::Half, and
// the GGUF block op's contract (its values against gguf-py are checked in
// tests/python/test_gguf_blocks.py), and the microscaling op's (NVFP4, MXFP4,
// MXFP8) against its Torch-free reference, which
// tests/python/test_microscale.py checks against compressed-tensors).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <functional>
#include <random>

#include "kernels/quant_math.h"
#include "kernels/ref/gguf_kquant_ref.h"
#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"
#include "ops/ops.h"
#include "qat/fake_quant.h"
#include "qat/modules/layer_specs.h"
#include "qat/modules/linear.h"
#include "tests/test_helpers.h"
#include "trainers/checkpoint.h"

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

// Every half value, every midpoint between neighbours (ties go to the even
// one), and random float bit patterns of every magnitude, against c10::Half.
TEST(Half, ConversionMatchesC10Half) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const c10::Half ref(static_cast<uint16_t>(h), c10::Half::from_bits());
    const float value = kernels::half_bits_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(kernels::float_bits(value), kernels::float_bits(float(ref)))
        << std::hex << h;
    if (std::isnan(value))
      continue;
    ASSERT_EQ(kernels::half_bits_from_float(value), h) << std::hex << h;
    // The float halfway to the next half up (in magnitude).
    const uint16_t next = static_cast<uint16_t>(h + 1);
    if ((next & 0x7C00) == 0x7C00 && (next & 0x3FF))
      continue;
    const double mid =
        (double(value) + double(kernels::half_bits_to_float(next))) / 2;
    const float tie = static_cast<float>(mid);
    if (double(tie) == mid) {
      ASSERT_EQ(kernels::half_bits_from_float(tie), c10::Half(tie).x)
          << std::hex << h;
    }
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 1000000; ++i) {
    const float x = kernels::bits_float(static_cast<uint32_t>(rng()));
    if (std::isnan(x))
      continue;
    ASSERT_EQ(kernels::half_bits_from_float(x), c10::Half(x).x) << x;
  }
}

TEST(Gguf, GradientIsStraightThroughWhereNothingClips) {
  // Q4_0: the block's largest magnitude is -3 (d = 3 / 8), so +3 would need
  // code 16: it is clipped to 15 and gets no gradient.
  auto x = torch::linspace(-1, 1, 32);
  x[0] = -3.0f;
  x[1] = 3.0f;
  x.requires_grad_();
  const auto dy = torch::arange(32).to(torch::kFloat);
  const auto y = ops::fake_quant_gguf(x, "q4_0");
  y.backward(dy);
  auto expected = dy.clone();
  expected[1] = 0.0f;
  EXPECT_TRUE(torch::equal(x.grad(), expected));
  EXPECT_EQ(y[1].item<float>(), 7 * 0.375f);
  EXPECT_EQ(y[0].item<float>(), -3.0f);

  // Q8_0 never clips.
  x.mutable_grad().reset();
  ops::fake_quant_gguf(x, "q8_0").backward(dy);
  EXPECT_TRUE(torch::equal(x.grad(), dy));

  // The K-quants clip where the 6-bit sub-block scale, rounded, leaves a
  // value beyond the largest code: there, and only there, no gradient, and
  // the output is the sub-block's end of range.
  torch::manual_seed(3);
  const auto w =
      (torch::randn({8, 256}) * torch::rand({8, 1}) * 4).requires_grad_();
  const auto dw = torch::rand({8, 256}) + 0.5;
  for (const char* type : {"q4_k", "q5_k", "q6_k"}) {
    w.mutable_grad().reset();
    const auto [y, mask] = ops::fake_quant_gguf_cachemask(w.detach(), type);
    ops::fake_quant_gguf(w, type).backward(dw);
    EXPECT_TRUE(torch::equal(w.grad(), dw * mask.to(torch::kFloat))) << type;
    // Where a value passes (mask 1), it is within half a step of its
    // fake-quantized value: |y - w| is at most the sub-block's scale / 2,
    // which is below the block's range / (2 * (levels - 1)) plus the scale
    // quantization; check the loose form, max |y - w| <= max |w| / 8.
    const auto error = (y - w.detach()).abs() * mask.to(torch::kFloat);
    EXPECT_LE(
        error.max().item<float>(), w.detach().abs().max().item<float>() / 8)
        << type;
  }
}

TEST(Gguf, BFloat16AndBatchesAreBlocksOfTheLastDimension) {
  torch::manual_seed(5);
  const auto x = torch::randn({3, 2, 512});
  for (const auto& [type, block] :
       {std::pair{"q8_0", 32},
        std::pair{"q4_0", 32},
        std::pair{"q5_0", 32},
        std::pair{"q5_1", 32},
        std::pair{"q4_k", 256},
        std::pair{"q5_k", 256},
        std::pair{"q6_k", 256}}) {
    const auto whole = ops::fake_quant_gguf(x, type);
    // Each block on its own gives the same values: blocks never span rows.
    const auto blocks = ops::fake_quant_gguf(x.reshape({-1, block}), type);
    EXPECT_TRUE(bitwise_equal(whole, blocks.view(x.sizes()))) << type;
    const auto xb = x.to(torch::kBFloat16);
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_gguf(xb, type),
        ops::fake_quant_gguf(xb.to(torch::kFloat), type).to(torch::kBFloat16)))
        << type;
    // A non-contiguous input gives the values of its contiguous copy.
    const auto t = x.transpose(0, 1);
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_gguf(t, type),
        ops::fake_quant_gguf(t.contiguous(), type)));
  }
  const auto meta = ops::fake_quant_gguf_cachemask(
      torch::empty({4, 64}, torch::device(torch::kMeta)), "q4_0");
  EXPECT_EQ(std::get<1>(meta).scalar_type(), torch::kBool);
  EXPECT_EQ(std::get<0>(meta).sizes(), (std::vector<int64_t>{4, 64}));
}

// A K-quant's kept representation: searched once, it gives what the dynamic
// op gives on the same values, and the stored bytes of the quantizer; as the
// weights move, the codes follow them under the fixed scales and mins.
TEST(Gguf, KQuantRepresentationIsSearchedOnceAndKept) {
  torch::manual_seed(11);
  const auto w = torch::randn({6, 512}) * 0.05;
  for (const char* type : {"q4_k", "q5_k", "q6_k"}) {
    const auto reps = ops::gguf_search(w, type);
    const int64_t rep_bytes = std::string(type) == "q6_k" ? 18 : 16;
    EXPECT_EQ(reps.sizes(), (std::vector<int64_t>{6, 2, rep_bytes})) << type;
    EXPECT_TRUE(torch::equal(
        ops::fake_quant_gguf_fixed(w, reps, type),
        ops::fake_quant_gguf(w, type)))
        << type;
    // Moved weights: fixed scales, so the output is the dynamic op's only
    // where the search would choose the same; its gradient is dy * mask and
    // its values lie on the fixed grid (re-quantizing changes nothing).
    const auto moved = (w + 0.01 * torch::randn_like(w)).requires_grad_();
    const auto [y, mask] =
        ops::fake_quant_gguf_fixed_cachemask(moved.detach(), reps, type);
    EXPECT_TRUE(torch::equal(ops::fake_quant_gguf_fixed(y, reps, type), y))
        << type;
    const auto dy = torch::rand_like(w) + 0.5;
    ops::fake_quant_gguf_fixed(moved, reps, type).backward(dy);
    EXPECT_TRUE(torch::equal(moved.grad(), dy * mask.to(torch::kFloat)))
        << type;
    // bf16 inputs run the float values and round the result once.
    const auto wb = moved.detach().to(torch::kBFloat16);
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_gguf_fixed(wb, reps, type),
        ops::fake_quant_gguf_fixed(wb.to(torch::kFloat), reps, type)
            .to(torch::kBFloat16)))
        << type;
  }
  const auto meta = ops::gguf_search(
      torch::empty({3, 768}, torch::device(torch::kMeta)), "q6_k");
  EXPECT_EQ(meta.sizes(), (std::vector<int64_t>{3, 3, 18}));
}

// LSQ's gradients for a K-quant's halves, from the format's own decode:
// x' = D sc q - Dmin m, with D = half(d), Dmin = half(dmin); in range
// dx'/dd = sc (q - u), u = (x + Dmin m) / (D sc), and dx'/ddmin = 0;
// clipped, sc q and -m (Q6_K: sc (q - 32 - x / (D sc)), sc (q - 32)). The
// codes are read back from the forward's output, and each super-block's sum
// is taken in double in another order than the kernel's.
std::pair<std::vector<double>, std::vector<double>> lsq_halves_reference(
    const torch::Tensor& x,
    const torch::Tensor& y,
    const torch::Tensor& mask,
    const torch::Tensor& dy,
    const torch::Tensor& representations,
    const char* type) {
  const auto& info = *kernels::find_gguf_type(type);
  const auto k = info.type == kernels::GgufType::q4_k
      ? kernels::KQuantType::q4_k
      : info.type == kernels::GgufType::q5_k ? kernels::KQuantType::q5_k
                                             : kernels::KQuantType::q6_k;
  const bool q6 = k == kernels::KQuantType::q6_k;
  const auto reps = representations.contiguous();
  const int64_t blocks = reps.numel() / info.representation_bytes;
  const float* xs = x.const_data_ptr<float>();
  const float* ys = y.const_data_ptr<float>();
  const float* gs = dy.const_data_ptr<float>();
  const auto mask_bytes = mask.to(torch::kUInt8).contiguous();
  const uint8_t* ms = mask_bytes.const_data_ptr<uint8_t>();
  std::vector<double> grad_d(blocks, 0.0), grad_dmin(blocks, 0.0);
  const int size = kernels::kquant_sub_block_size(k);
  for (int64_t b = 0; b < blocks; ++b) {
    std::vector<uint8_t> block(info.block_bytes, 0);
    std::memcpy(
        block.data() + info.representation_offset,
        reps.const_data_ptr<uint8_t>() + b * info.representation_bytes,
        info.representation_bytes);
    kernels::KQuantRepresentation rep;
    uint8_t unused[kernels::kKQuantBlockSize];
    kernels::kquant_unpack(k, block.data(), rep, unused);
    const float D = kernels::half_bits_to_float(rep.d_bits);
    const float Dmin = kernels::half_bits_to_float(rep.dmin_bits);
    for (int i = kernels::kKQuantBlockSize - 1; i >= 0; --i) {
      const int64_t at = b * kernels::kKQuantBlockSize + i;
      const int s = i / size;
      const double sc =
          q6 ? rep.scales[s] : static_cast<uint8_t>(rep.scales[s]);
      const double m = q6 ? 0.0 : rep.mins[s];
      const float scale = D * static_cast<float>(sc);
      const float min = Dmin * static_cast<float>(m);
      if (scale == 0.0f) {
        grad_dmin[b] -= gs[at] * m;
        continue;
      }
      const double q =
          std::nearbyint((static_cast<double>(ys[at]) + min) / scale);
      if (ms[at]) {
        const double u = (static_cast<double>(xs[at]) + min) / scale;
        grad_d[b] += gs[at] * sc * (q - u);
      } else {
        grad_d[b] += gs[at] * sc * q;
        grad_dmin[b] -= gs[at] * m;
      }
    }
  }
  return {grad_d, grad_dmin};
}

TEST(Gguf, LearnedKQuantHalvesGetLsqGradients) {
  torch::manual_seed(12);
  const auto w = torch::randn({4, 512}) * 0.05;
  for (const char* type : {"q4_k", "q5_k", "q6_k"}) {
    const auto reps = ops::gguf_search(w, type);
    const auto [d0, dmin0] = ops::gguf_representation_halves(reps, type);
    EXPECT_EQ(d0.sizes(), (std::vector<int64_t>{4, 2})) << type;
    // (Q6_K's d is negative: ggml's make_qx_quants divides by -128.)
    EXPECT_GT(d0.abs().min().item<float>(), 0.0f) << type;
    // The searched halves give the fixed forward.
    const auto x = w + 0.03 * torch::randn_like(w);
    EXPECT_TRUE(torch::equal(
        ops::fake_quant_gguf_learned(x, reps, d0, dmin0, type, 1.0),
        ops::fake_quant_gguf_fixed(x, reps, type)))
        << type;
    // Moved halves off the half grid: the forward rounds them to half.
    const auto d = (d0 * 1.013 + 1e-6).requires_grad_();
    const auto dmin = (dmin0 * 0.987).requires_grad_();
    const auto learned = ops::gguf_with_halves(reps, d, dmin, type);
    const auto [d_half, dmin_half] =
        ops::gguf_representation_halves(learned, type);
    EXPECT_TRUE(
        torch::equal(d_half, d.detach().to(torch::kHalf).to(torch::kFloat)))
        << type;
    if (std::string(type) != "q6_k") {
      EXPECT_TRUE(torch::equal(
          dmin_half, dmin.detach().to(torch::kHalf).to(torch::kFloat)))
          << type;
    }
    const auto input = x.clone().requires_grad_();
    const auto y =
        ops::fake_quant_gguf_learned(input, reps, d, dmin, type, 0.5);
    const auto [fixed, mask] =
        ops::fake_quant_gguf_fixed_cachemask(x, learned, type);
    EXPECT_TRUE(torch::equal(y, fixed)) << type;
    EXPECT_GT((mask == 0).sum().item<int64_t>(), 0)
        << type << ": nothing clips";
    const auto dy = torch::rand_like(x) + 0.5;
    y.backward(dy);
    EXPECT_TRUE(torch::equal(input.grad(), dy * mask.to(torch::kFloat)))
        << type;
    const auto [ref_d, ref_dmin] =
        lsq_halves_reference(x, fixed, mask, dy, learned, type);
    const auto gd = d.grad().contiguous(), gdmin = dmin.grad().contiguous();
    for (int64_t b = 0; b < d.numel(); ++b) {
      // Sums of 256 terms of at most 63 * |q - u| <= 63 * 64 in magnitude:
      // float rounding of the kernel's result dominates.
      EXPECT_NEAR(
          gd.const_data_ptr<float>()[b],
          0.5 * ref_d[b],
          1e-6 * std::abs(ref_d[b]) + 1e-4)
          << type << " block " << b;
      EXPECT_NEAR(
          gdmin.const_data_ptr<float>()[b],
          0.5 * ref_dmin[b],
          1e-6 * std::abs(ref_dmin[b]) + 1e-4)
          << type << " block " << b;
    }
    EXPECT_NE(gd.abs().sum().item<float>(), 0.0f) << type;
  }
}

// lsq on a K-quant learns its halves: initialised from the search, moved by
// training, and what the converted layer serves is what the last forward
// computed, bit for bit.
TEST(Gguf, LearnedKQuantHalvesTrainAndConvertExactly) {
  torch::manual_seed(13);
  const auto x = torch::randn({16, 512});
  for (const char* name : {"gguf_q4_k", "gguf_q6_k"}) {
    torch::nn::Linear fc(512, 8);
    LayerQuantSpecs specs = preset(name);
    specs.weight->estimator(Estimator::lsq);
    auto layer = QuantLinear::from_float(fc, specs);
    const auto target = fc(x).detach() * 1.1;
    layer(x); // the search
    auto& fq = *layer->quantizers.weight;
    const auto d0 = fq.gguf_d().clone();
    const auto [searched_d, searched_dmin] = ops::gguf_representation_halves(
        fq.gguf_representation(), std::string(name).substr(5));
    EXPECT_TRUE(torch::equal(d0, searched_d)) << name;
    EXPECT_EQ(fq.gguf_dmin().defined(), std::string(name) == "gguf_q4_k");
    fq.enable_observer(false);
    torch::optim::SGD optimizer(fq.quantizer_parameters(), 1e-3);
    for (int step = 0; step < 5; ++step) {
      optimizer.zero_grad();
      torch::mse_loss(layer(x), target).backward();
      optimizer.step();
    }
    EXPECT_FALSE(torch::equal(fq.gguf_d(), d0)) << name << ": d did not move";
    const auto trained = layer(x).detach();
    // A fresh copy, never searched, takes the trained state as the job's
    // record and export stages load it.
    auto copy = QuantLinear::from_float(torch::nn::Linear(512, 8), specs);
    train::load_module_state(*copy, train::module_state(*layer), "trained");
    copy->quantizers.weight->enable_observer(false);
    EXPECT_TRUE(bitwise_equal(copy(x), trained)) << name;
    layer->convert_weight();
    EXPECT_TRUE(bitwise_equal(layer(x), trained)) << name;
  }
  auto plus = preset("gguf_q4_k");
  plus.weight->estimator(Estimator::lsq_plus);
  torch::nn::Linear fc(512, 8);
  const std::string message =
      testing::error_message([&] { QuantLinear::from_float(fc, plus); });
  EXPECT_NE(message.find("learns its own representation"), std::string::npos)
      << message;
}

TEST(Gguf, BadArgumentsGiveClearErrors) {
  const auto expect_error = [](const std::function<void()>& call,
                               const std::string& message) {
    EXPECT_TRUE(testing::throws_with<c10::Error>(call, message));
  };
  expect_error(
      [] {
        ops::fake_quant_gguf(torch::randn({4, 48}), "q8_0");
      },
      "must be a multiple of 32; got shape [4, 48]");
  expect_error(
      [] { ops::fake_quant_gguf(torch::randn({32}), "q3_k"); },
      "unknown GGUF block type 'q3_k'; expected one of 'q8_0'");
  // A K-quant super-block is 256 values.
  expect_error(
      [] {
        ops::fake_quant_gguf(torch::randn({2, 576}), "q4_k");
      },
      "GGUF q4_k blocks are 256 consecutive values of the last dimension, "
      "which must be a multiple of 256; got shape [2, 576]");
  expect_error(
      [] {
        ops::gguf_search(torch::randn({2, 64}), "q4_0");
      },
      "GGUF q4_0 is quantized from its values alone");
  expect_error(
      [] {
        const auto x = torch::randn({2, 256});
        ops::fake_quant_gguf_fixed(
            x, ops::gguf_search(torch::randn({3, 256}), "q4_k"), "q4_k");
      },
      "representations must be uint8 of shape [2, 1, 16]");
  expect_error(
      [] {
        ops::fake_quant_gguf(torch::randn({32}).to(torch::kDouble), "q8_0");
      },
      "input must be float32 or bfloat16");
}

// The op against the reference rows: values (NaN included, bit for bit) and
// clipping mask, for dynamic and given global scales, inputs of every
// magnitude with NaN, infinities, signed zeros and all-zero blocks, and more
// blocks than one thread's share.
TEST(Microscale, OpIsTheReferenceBitForBit) {
  auto x = wide_range({64, 1024}, 31);
  {
    auto flat = x.view({-1});
    flat.narrow(0, 0, 32).zero_();
    flat[40] = std::numeric_limits<float>::quiet_NaN();
    flat[100] = std::numeric_limits<float>::infinity();
    flat[101] = -0.0f;
    flat.narrow(0, 4096, 64).mul_(1e-30);
  }
  for (const char* name : {"nvfp4", "mxfp4", "mxfp8"}) {
    const auto& info = *kernels::find_microscale_format(name);
    const int64_t rows = x.numel() / info.block_size;
    for (bool given : {false, true}) {
      const float g = given
          ? 3.5f
          : kernels::microscale_global_scale_ref(
                x.const_data_ptr<float>(), x.numel(), info.format);
      std::vector<uint8_t> codes(rows);
      kernels::microscale_scales_ref(
          x.const_data_ptr<float>(),
          rows,
          info.block_size,
          info.format,
          g,
          codes.data());
      auto want = torch::empty_like(x);
      auto want_mask = torch::empty_like(x, torch::kBool);
      kernels::fake_quant_microscale_ref(
          x.const_data_ptr<float>(),
          want.mutable_data_ptr<float>(),
          static_cast<uint8_t*>(want_mask.data_ptr()),
          rows,
          info.block_size,
          info.format,
          codes.data(),
          g);
      if (given && !info.global_scale)
        continue;
      const auto global =
          given ? std::optional(torch::full({1}, g)) : std::nullopt;
      const auto [y, mask] =
          ops::fake_quant_microscale_cachemask(x, name, global);
      EXPECT_TRUE(bitwise_equal(y, want)) << name << " given " << given;
      EXPECT_TRUE(torch::equal(mask, want_mask)) << name;
      EXPECT_TRUE(
          bitwise_equal(ops::fake_quant_microscale(x, name, global), want))
          << name;
    }
  }
}

TEST(Microscale, GradientIsStraightThroughWhereNothingClips) {
  torch::manual_seed(5);
  for (const char* name : {"nvfp4", "mxfp4", "mxfp8"}) {
    const auto x = (torch::randn({3, 4, 64})).requires_grad_();
    // A global scale 8x smaller than the data's makes NVFP4 clip.
    const std::optional<torch::Tensor> global = std::string(name) == "nvfp4"
        ? std::optional(
              torch::full({1}, 2688.0f / 8.0f / x.abs().max().item<float>()))
        : std::nullopt;
    const auto [y, mask] =
        ops::fake_quant_microscale_cachemask(x.detach(), name, global);
    const auto dy = torch::rand_like(y) + 0.5;
    ops::fake_quant_microscale(x, name, global).backward(dy);
    EXPECT_TRUE(torch::equal(x.grad(), dy * mask.to(torch::kFloat))) << name;
    if (global) {
      EXPECT_LT(mask.to(torch::kFloat).mean().item<float>(), 0.99f);
    }
    // Values already on the grid stay there (a -0.0 becomes +0.0, as
    // compressed-tensors' cast_to_fp4 takes torch.sign of it).
    EXPECT_TRUE(torch::equal(ops::fake_quant_microscale(y, name, global), y))
        << name;
    // bfloat16 inputs: the float32 result, rounded once.
    const auto xb = x.detach().to(torch::kBFloat16);
    EXPECT_TRUE(bitwise_equal(
        ops::fake_quant_microscale(xb, name, global),
        ops::fake_quant_microscale(xb.to(torch::kFloat), name, global)
            .to(torch::kBFloat16)))
        << name;
  }
  const auto meta = ops::fake_quant_microscale_cachemask(
      torch::empty({2, 64}, torch::device(torch::kMeta)), "mxfp4", {});
  EXPECT_EQ(std::get<1>(meta).sizes(), (std::vector<int64_t>{2, 64}));
}

TEST(Microscale, CalibratedNvfp4GlobalScaleIsKept) {
  FakeQuantizer fq(QuantSpec::microscale(NumberFormat::nvfp4).dynamic(false));
  const auto a = torch::randn({4, 32}), b = 3 * torch::randn({4, 32});
  fq(a);
  fq(b);
  const float amax =
      std::max(a.abs().max().item<float>(), b.abs().max().item<float>());
  EXPECT_EQ(fq->scale().item<float>(), kernels::nvfp4_global_scale(amax));
  fq->enable_observer(false);
  const auto c = 10 * torch::randn({4, 32});
  EXPECT_TRUE(bitwise_equal(
      fq(c), ops::fake_quant_microscale(c, "nvfp4", fq->scale())));
  EXPECT_FALSE(
      bitwise_equal(fq(c), ops::fake_quant_microscale(c, "nvfp4", {})));
}

TEST(Microscale, BadArgumentsGiveClearErrors) {
  const auto expect_error = [](const std::function<void()>& call,
                               const std::string& message) {
    EXPECT_TRUE(testing::throws_with<c10::Error>(call, message));
  };
  expect_error(
      [] {
        ops::fake_quant_microscale(torch::randn({4, 40}), "nvfp4", {});
      },
      "nvfp4 blocks are 16 consecutive values of the last dimension, which "
      "must be a multiple of 16; got shape [4, 40]");
  expect_error(
      [] {
        ops::fake_quant_microscale(torch::randn({4, 48}), "mxfp4", {});
      },
      "must be a multiple of 32; got shape [4, 48]");
  expect_error(
      [] { ops::fake_quant_microscale(torch::randn({32}), "mxfp6", {}); },
      "unknown microscaling format 'mxfp6'");
  expect_error(
      [] {
        ops::fake_quant_microscale(
            torch::randn({32}), "mxfp8", torch::ones({1}));
      },
      "mxfp8 has no global scale");
  for (const float bad :
       {0.0f,
        -1.0f,
        std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::quiet_NaN()}) {
    expect_error(
        [&] {
          ops::fake_quant_microscale(
              torch::randn({16}), "nvfp4", torch::full({1}, bad));
        },
        "the NVFP4 global scale must be finite and positive");
  }
  expect_error(
      [] {
        ops::fake_quant_microscale(
            torch::randn({16}), "nvfp4", torch::ones({2}));
      },
      "the global scale must be one float32 value");
  expect_error(
      [] {
        ops::fake_quant_microscale(
            torch::randn({32}).to(torch::kDouble), "mxfp4", {});
      },
      "input must be float32 or bfloat16");
  // A layer whose rows are not whole blocks is refused when prepared.
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [] {
        torch::nn::Linear fc(40, 8);
        QuantLinear::from_float(fc, LayerQuantSpecs{})
            ->set_specs(preset("nvfp4"));
      },
      "cannot be split into nvfp4 blocks of 16 along its last dimension"));
  // Specs: one exact spec per format; MX has nothing to calibrate.
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [] {
        QuantSpec::microscale(NumberFormat::mxfp4).dynamic(false).validate();
      },
      "mxfp4 has only power-of-two block scales"));
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [] {
        QuantSpec::microscale(NumberFormat::nvfp4)
            .granularity(Granularity::per_channel)
            .validate();
      },
      "the nvfp4 format is one exact spec: nvfp4 block=16 global=dynamic"));
  EXPECT_TRUE(testing::throws_with<std::invalid_argument>(
      [] {
        FakeQuantizer(
            FakeQuantizerOptions(QuantSpec::microscale(NumberFormat::mxfp8))
                .estimator(Estimator::lsq));
      },
      "learned estimators are for integer formats"));
}

} // namespace
} // namespace qat
