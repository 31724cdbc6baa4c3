// QuantSpec validation, observers against hand-computed ranges and qparams, the
// estimators' gradients against closed forms, and FakeQuantizer's switches and
// serialization.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "ops/ops.h"
#include "qat/fake_quant.h"
#include "qat/observer.h"
#include "qat/spec.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;

void expect_invalid(const QuantSpec& spec, const std::string& words) {
  try {
    spec.validate();
    ADD_FAILURE() << spec.to_string() << " validated; expected an error about '"
                  << words << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(QuantSpec, CodeRanges) {
  for (int bits = 2; bits <= 8; ++bits) {
    const auto s = QuantSpec().bits(bits);
    EXPECT_EQ(s.quant_min(), -(1 << (bits - 1)));
    EXPECT_EQ(s.quant_max(), (1 << (bits - 1)) - 1);
    EXPECT_EQ(
        QuantSpec().bits(bits).narrow_range(true).quant_min(),
        -(1 << (bits - 1)) + 1);
    const auto u = QuantSpec().bits(bits).is_signed(false);
    EXPECT_EQ(u.quant_min(), 0);
    EXPECT_EQ(u.quant_max(), (1 << bits) - 1);
    EXPECT_NO_THROW(s.validate());
  }
  EXPECT_EQ(QuantSpec().format(NumberFormat::fp8_e4m3).format_max(), 448.0);
  EXPECT_EQ(QuantSpec().format(NumberFormat::fp8_e5m2).format_max(), 57344.0);
}

TEST(QuantSpec, ValidateNamesTheProblem) {
  expect_invalid(QuantSpec().bits(9), "bits must be in 2..8");
  expect_invalid(QuantSpec().bits(1), "bits must be in 2..8");
  expect_invalid(
      QuantSpec().granularity(Granularity::per_group),
      "per_group needs group_size > 0");
  expect_invalid(
      QuantSpec().group_size(32), "group_size is only used per_group");
  expect_invalid(
      QuantSpec().granularity(Granularity::per_token), "set dynamic");
  expect_invalid(
      QuantSpec().format(NumberFormat::fp8_e4m3).symmetric(false),
      "FP8 formats are symmetric");
  expect_invalid(
      QuantSpec().is_signed(false).narrow_range(true),
      "narrow_range applies to signed symmetric");
  EXPECT_EQ(
      QuantSpec()
          .bits(4)
          .granularity(Granularity::per_group)
          .axis(-1)
          .group_size(128)
          .to_string(),
      "int4 sym per_group(axis=-1, group=128)");
}

// torch.ao's rule, computed by hand for x in [-1, 3].
TEST(Observer, MinMaxQParamsByHand) {
  const auto x = torch::tensor({-1.0f, 0.5f, 3.0f, 2.0f});
  Observer affine(QuantSpec().symmetric(false));
  affine->observe(x);
  const QParams a = affine->qparams();
  // scale = (3 - (-1)) / 255; zero point = -128 - round(-1 / scale) = -128 + 64
  // = -64.
  EXPECT_FLOAT_EQ(a.scale.item<float>(), 4.0f / 255.0f);
  EXPECT_EQ(a.zero_point.item<int>(), -64);

  // Symmetric: the runtimes' amax / 127 by default, torch.ao's amax / 127.5
  // (and amax / 7 against 7.5 at 4 bits) on request.
  Observer symmetric{QuantSpec()};
  symmetric->observe(x);
  EXPECT_EQ(symmetric->qparams().scale.item<float>(), 3.0f / 127.0f);
  EXPECT_EQ(symmetric->qparams().zero_point.item<int>(), 0);
  Observer torch_ao{QuantSpec().symmetric_scale(SymmetricScale::half_range)};
  torch_ao->observe(x);
  EXPECT_EQ(torch_ao->qparams().scale.item<float>(), 3.0f / 127.5f);
  Observer int4{QuantSpec().bits(4)};
  int4->observe(x);
  EXPECT_EQ(int4->qparams().scale.item<float>(), 3.0f / 7.0f);
  Observer int4_torch_ao{
      QuantSpec().bits(4).symmetric_scale(SymmetricScale::half_range)};
  int4_torch_ao->observe(x);
  EXPECT_EQ(int4_torch_ao->qparams().scale.item<float>(), 3.0f / 7.5f);

  // Unsigned symmetric: zero point 128, amax at 128 + 127 (torch.ao: 127.5).
  Observer unsigned_sym(QuantSpec().is_signed(false));
  unsigned_sym->observe(x);
  EXPECT_EQ(unsigned_sym->qparams().zero_point.item<int>(), 128);
  EXPECT_EQ(unsigned_sym->qparams().scale.item<float>(), 3.0f / 127.0f);

  Observer fp8(QuantSpec().format(NumberFormat::fp8_e4m3));
  fp8->observe(x);
  EXPECT_FLOAT_EQ(fp8->qparams().scale.item<float>(), 3.0f / 448.0f);

  // Running min / max over batches.
  affine->observe(torch::tensor({-2.0f, 1.0f}));
  EXPECT_FLOAT_EQ(affine->min_val().item<float>(), -2.0f);
  EXPECT_FLOAT_EQ(affine->max_val().item<float>(), 3.0f);
}

// Why qmax is the default: with it, each row's largest value fake-quantizes
// to the largest code and stays in range whatever the last bits of amax;
// with torch.ao's half range it sits on the rounding tie between qmax and the
// clamp, and neighbouring floats amax, nextafter(amax) fall on either side.
// Two data-parallel ranks whose weights differ by an ulp then disagree on
// whether the row's largest weight gets a gradient (docs/DISTRIBUTED.md).
TEST(Observer, RuntimeScaleKeepsEachRowsLargestValueOffTheClampTie) {
  torch::manual_seed(3);
  const int64_t rows = 4096;
  // Pairs of rows whose largest values are neighbouring floats.
  const auto amax = torch::rand({rows / 2}) * 4 + 0.01;
  const auto next = torch::nextafter(amax, torch::full_like(amax, 10.0f));
  auto w = torch::rand({rows, 16}) * 2 - 1;
  w.select(1, 0).copy_(torch::stack({amax, next}, 1).reshape({rows}));
  w.narrow(1, 1, 15).mul_(w.select(1, 0).unsqueeze(1) * 0.99);
  for (const int bits : {8, 4}) {
    for (const auto rule : {SymmetricScale::qmax, SymmetricScale::half_range}) {
      const auto spec = QuantSpec()
                            .bits(bits)
                            .granularity(Granularity::per_channel)
                            .axis(0)
                            .symmetric_scale(rule);
      Observer observer(spec);
      observer->observe(w);
      const QParams q = observer->qparams();
      const auto [y, mask] = ops::fake_quant_affine_cachemask(
          w, q.scale, q.zero_point, 0, 0, spec.quant_min(), spec.quant_max());
      const auto largest_in_range = mask.select(1, 0).to(torch::kBool);
      const auto pairs = largest_in_range.reshape({rows / 2, 2});
      const int64_t disagree =
          (pairs.select(1, 0) != pairs.select(1, 1)).sum().item<int64_t>();
      if (rule == SymmetricScale::qmax) {
        EXPECT_TRUE(largest_in_range.all().item<bool>()) << bits << " bits";
        EXPECT_TRUE(torch::equal(
            y.select(1, 0), q.scale * static_cast<double>(spec.quant_max())))
            << bits << " bits";
        EXPECT_EQ(disagree, 0) << bits << " bits";
      } else {
        // A sizeable share of neighbouring pairs straddles the tie (27% at 8
        // bits, 31% at 4 for this draw); the share depends on the amax drawn.
        EXPECT_GT(disagree, rows / 20) << bits << " bits";
      }
    }
  }
}

TEST(Observer, PerChannelGroupAndTokenShapes) {
  const auto w =
      torch::tensor({{1.0f, -2.0f, 0.5f, 4.0f}, {-0.25f, 0.25f, 8.0f, -1.0f}});
  Observer channel(QuantSpec().granularity(Granularity::per_channel).axis(1));
  channel->observe(w);
  EXPECT_TRUE(torch::allclose(
      channel->qparams().scale, torch::tensor({1.0f, 2.0f, 8.0f, 4.0f}) / 127));

  Observer group(
      QuantSpec().granularity(Granularity::per_group).axis(-1).group_size(2));
  group->observe(w);
  EXPECT_TRUE(torch::allclose(
      group->qparams().scale,
      torch::tensor({{2.0f, 4.0f}, {0.25f, 8.0f}}) / 127));

  Observer group_axis0(
      QuantSpec().granularity(Granularity::per_group).axis(0).group_size(2));
  group_axis0->observe(w);
  EXPECT_EQ(group_axis0->qparams().scale.sizes(), (std::vector<int64_t>{1, 4}));
  EXPECT_TRUE(torch::allclose(
      group_axis0->qparams().scale,
      torch::tensor({{1.0f, 2.0f, 8.0f, 4.0f}}) / 127));
}

TEST(Observer, MovingAverageByHand) {
  Observer ma(
      QuantSpec().symmetric(false),
      ObserverOptions()
          .kind(ObserverKind::moving_average)
          .averaging_constant(0.25));
  ma->observe(torch::tensor({-1.0f, 1.0f}));
  ma->observe(torch::tensor({-5.0f, 9.0f}));
  EXPECT_FLOAT_EQ(ma->min_val().item<float>(), -1.0f + 0.25f * (-5.0f + 1.0f));
  EXPECT_FLOAT_EQ(ma->max_val().item<float>(), 1.0f + 0.25f * (9.0f - 1.0f));
}

TEST(Observer, PercentileClipsOutliers) {
  // 0..999 plus one outlier: the 99th percentile of 1001 values is the 991st
  // smallest (990).
  auto x = torch::cat(
      {torch::arange(1000).to(torch::kFloat), torch::tensor({1e6f})});
  Observer p(
      QuantSpec().symmetric(false),
      ObserverOptions().kind(ObserverKind::percentile).percentile(99.0));
  p->observe(x);
  EXPECT_FLOAT_EQ(p->max_val().item<float>(), 990.0f);
  EXPECT_FLOAT_EQ(p->min_val().item<float>(), 10.0f);
}

// The MSE observer's range equals a brute-force search over the same clipping
// ratios.
TEST(Observer, MseMatchesBruteForceSearch) {
  torch::manual_seed(5);
  auto w = torch::randn({6, 256});
  w.index_put_({0, 0}, 25.0f); // one outlier row
  const auto spec =
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0);
  Observer mse(spec, ObserverOptions().kind(ObserverKind::mse).mse_steps(20));
  mse->observe(w);
  for (int64_t row = 0; row < 6; ++row) {
    const auto x = w[row].to(torch::kDouble);
    const double lo = x.min().item<double>(), hi = x.max().item<double>();
    double best_err = INFINITY, best_ratio = 1.0;
    for (int k = 0; k <= 20; ++k) {
      const double ratio = 1.0 - 0.8 * k / 20.0;
      const double scale =
          std::max(std::max(-lo, hi) * ratio / 7, 1.1920929e-07);
      const auto q = torch::clamp(torch::round(x / scale), -8, 7) * scale;
      const double err = (q - x).square().sum().item<double>();
      if (err < best_err)
        best_err = err, best_ratio = ratio;
    }
    EXPECT_NEAR(mse->max_val()[row].item<float>(), hi * best_ratio, 1e-4)
        << "row " << row;
  }
  EXPECT_LT(mse->max_val()[0].item<float>(), 25.0f); // the outlier is clipped
}

// Data parallelism: a rank that observes half of each batch and reduces its
// batch range with the other half's (min / max) ends with exactly the state of
// one observer that saw the whole batches, for the observers whose ranges
// compose; percentile and MSE are told to average instead.
TEST(Observer, ShardedObservationWithRangeReductionEqualsTheWholeBatch) {
  torch::manual_seed(11);
  for (const auto kind :
       {ObserverKind::min_max, ObserverKind::moving_average}) {
    for (const auto& spec :
         {QuantSpec().symmetric(false),
          QuantSpec().granularity(Granularity::per_channel).axis(1)}) {
      const auto options = ObserverOptions().kind(kind).averaging_constant(0.3);
      Observer whole(spec, options), shard(spec, options);
      torch::Tensor other_min, other_max; // the other rank's batch range
      shard->set_range_reduction(
          [&](torch::Tensor& lo, torch::Tensor& hi, bool mean) {
            EXPECT_FALSE(mean);
            lo = torch::minimum(lo, other_min);
            hi = torch::maximum(hi, other_max);
          });
      for (int batch = 0; batch < 4; ++batch) {
        const auto x = torch::randn({8, 5}) * (batch + 1) + batch;
        Observer other(spec, options); // its first batch's range, as is
        other->observe(x.narrow(0, 4, 4));
        other_min = other->min_val();
        other_max = other->max_val();
        whole->observe(x);
        shard->observe(x.narrow(0, 0, 4));
      }
      EXPECT_TRUE(testing::bitwise_equal(shard->min_val(), whole->min_val()));
      EXPECT_TRUE(testing::bitwise_equal(shard->max_val(), whole->max_val()));
      EXPECT_TRUE(testing::bitwise_equal(
          shard->qparams().scale, whole->qparams().scale));
    }
  }
  for (const auto kind : {ObserverKind::percentile, ObserverKind::mse}) {
    Observer averaged(QuantSpec(), ObserverOptions().kind(kind));
    bool asked_for_mean = false;
    averaged->set_range_reduction(
        [&](torch::Tensor& lo, torch::Tensor& hi, bool mean) {
          asked_for_mean = mean;
          lo = (lo + -3.0f) / 2; // the other rank's range: [-3, 5]
          hi = (hi + 5.0f) / 2;
        });
    Observer local(QuantSpec(), ObserverOptions().kind(kind));
    const auto x = torch::randn({64});
    averaged->observe(x);
    local->observe(x);
    EXPECT_TRUE(asked_for_mean);
    EXPECT_FLOAT_EQ(
        averaged->max_val().item<float>(),
        (local->max_val().item<float>() + 5.0f) / 2);
  }
}

TEST(Observer, MisuseIsReportedClearly) {
  Observer fresh{QuantSpec()};
  try {
    fresh->qparams();
    ADD_FAILURE() << "qparams() before any observation did not throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("calibrate first"), std::string::npos)
        << e.what();
  }
  Observer channel{QuantSpec().granularity(Granularity::per_channel).axis(0)};
  channel->observe(torch::randn({4, 8}));
  try {
    channel->observe(torch::randn({5, 8}));
    ADD_FAILURE() << "a tensor with another channel count was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(
        std::string(e.what()).find(
            "has 5 quantization groups, earlier ones had 4"),
        std::string::npos)
        << e.what();
  }
  Observer groups{
      QuantSpec().granularity(Granularity::per_group).axis(-1).group_size(3)};
  EXPECT_THROW(groups->observe(torch::randn({2, 8})), std::invalid_argument);
  EXPECT_THROW(
      Observer(
          QuantSpec(),
          ObserverOptions().kind(ObserverKind::percentile).percentile(40)),
      std::invalid_argument);
}

TEST(FakeQuantizer, SteGradientIsTheClippingMask) {
  FakeQuantizer fq(FakeQuantizerOptions(QuantSpec().bits(4).symmetric(false)));
  const auto x = torch::linspace(-2, 6, 101).requires_grad_(true);
  const auto dy = torch::randn({101});
  fq(x).backward(dy);
  // Closed form: the calibrated range is [-2, 6], so every element is inside
  // it.
  EXPECT_TRUE(torch::equal(x.grad(), dy));
  fq->enable_observer(false);
  const auto x2 = (torch::linspace(-2, 6, 101) * 2).requires_grad_(true);
  fq(x2).backward(dy);
  // In range means qmin <= zp + round(x / scale) <= qmax.
  const auto code =
      torch::round(
          x2.detach().to(torch::kDouble) / fq->scale().to(torch::kDouble)) +
      fq->zero_point();
  const auto inside = (code >= -8) & (code <= 7);
  EXPECT_TRUE(torch::equal(x2.grad(), dy * inside));
}

TEST(FakeQuantizer, SwitchesTurnObservationAndQuantizationOff) {
  FakeQuantizer fq(FakeQuantizerOptions(QuantSpec().bits(3)));
  const auto x = torch::randn({32});
  fq->enable_fake_quant(false);
  EXPECT_TRUE(torch::equal(fq(x), x)); // observed, not quantized
  const auto scale = fq->scale().clone();
  fq->enable_observer(false);
  fq->enable_fake_quant(true);
  fq(x * 10);
  EXPECT_TRUE(torch::equal(fq->scale(), scale)); // frozen
  EXPECT_FALSE(torch::equal(fq(x), x));
}

TEST(FakeQuantizer, PactGradientsMatchClosedForm) {
  for (bool is_signed : {false, true}) {
    FakeQuantizer fq(
        FakeQuantizerOptions(QuantSpec().bits(4).is_signed(is_signed))
            .estimator(Estimator::pact)
            .pact_alpha(2.0));
    const auto x = torch::tensor(
        {-3.0f, -1.0f, 0.3f, 1.9f, 2.5f, 7.0f}, torch::requires_grad());
    const auto dy = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f});
    fq(x).backward(dy);
    const auto alpha_grad = fq->pact_alpha().grad().item<float>();
    if (is_signed) {
      EXPECT_FLOAT_EQ(
          alpha_grad, 5.0f + 6.0f - 1.0f); // x >= alpha: +dy; x <= -alpha: -dy
      EXPECT_TRUE(torch::equal(
          x.grad(), torch::tensor({0.0f, 2.0f, 3.0f, 4.0f, 0.0f, 0.0f})));
    } else {
      EXPECT_FLOAT_EQ(alpha_grad, 5.0f + 6.0f);
      EXPECT_TRUE(torch::equal(
          x.grad(), torch::tensor({0.0f, 0.0f, 3.0f, 4.0f, 0.0f, 0.0f})));
    }
  }
}

TEST(FakeQuantizer, LsqUsesThePaperGradientScale) {
  const auto spec =
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0);
  FakeQuantizer fq(FakeQuantizerOptions(spec).estimator(Estimator::lsq));
  const auto w = torch::randn({8, 64}).requires_grad_(true);
  const auto dy = torch::randn({8, 64});
  fq(w).backward(dy);
  // ATen's learnable op with g = 1 / sqrt(64 * 7): the LSQ paper's scaling for
  // 64 weights per scale.
  const auto s = fq->scale().detach().clone().requires_grad_(true);
  at::_fake_quantize_learnable_per_channel_affine(
      w.detach(), s, torch::zeros({8}), 0, -8, 7, 1.0 / std::sqrt(64.0 * 7))
      .backward(dy);
  EXPECT_TRUE(torch::allclose(fq->scale().grad(), s.grad(), 1e-4, 1e-6));
  EXPECT_EQ(fq->quantizer_parameters().size(), 1u);
}

TEST(FakeQuantizer, EstimatorsRefuseSpecsTheyCannotServe) {
  EXPECT_THROW(
      FakeQuantizer(
          FakeQuantizerOptions(QuantSpec()).estimator(Estimator::lsq_plus)),
      std::invalid_argument);
  EXPECT_THROW(
      FakeQuantizer(
          FakeQuantizerOptions(QuantSpec().format(NumberFormat::fp8_e4m3))
              .estimator(Estimator::lsq)),
      std::invalid_argument);
  EXPECT_THROW(
      FakeQuantizer(FakeQuantizerOptions(
                        QuantSpec().granularity(Granularity::per_channel))
                        .estimator(Estimator::pact)),
      std::invalid_argument);
}

TEST(FakeQuantizer, DynamicPerTokenQuantizesEachRowWithItsOwnScale) {
  FakeQuantizer fq(FakeQuantizerOptions(
      QuantSpec().granularity(Granularity::per_token).dynamic(true)));
  const auto x = torch::randn({3, 5, 16}) *
      torch::tensor({1.0f, 10.0f, 100.0f}).view({3, 1, 1});
  const auto scale = x.abs().amax(-1, true) / 127;
  const auto expected = ops::fake_quant_affine(
      x, scale, torch::zeros_like(scale, torch::kInt), -1, 16, -128, 127);
  EXPECT_TRUE(bitwise_equal(fq(x), expected));
}

TEST(FakeQuantizer, SavesAndLoadsThroughLibTorchSerialization) {
  const auto options =
      FakeQuantizerOptions(QuantSpec()
                               .bits(4)
                               .symmetric(false)
                               .granularity(Granularity::per_channel)
                               .axis(0))
          .estimator(Estimator::lsq_plus)
          .observer(ObserverOptions().kind(ObserverKind::moving_average));
  FakeQuantizer trained(options);
  const auto w = torch::randn({6, 20});
  trained(w);
  trained->enable_observer(false);
  torch::optim::SGD opt(trained->quantizer_parameters(), 0.1);
  trained(w).square().sum().backward();
  opt.step();
  const auto path =
      (std::filesystem::temp_directory_path() / "qat_fake_quantizer_test.pt")
          .string();
  torch::save(trained, path);

  FakeQuantizer loaded(options);
  torch::load(loaded, path);
  std::filesystem::remove(path);
  EXPECT_TRUE(bitwise_equal(loaded->scale(), trained->scale()));
  EXPECT_TRUE(bitwise_equal(loaded->zero_point(), trained->zero_point()));
  EXPECT_FALSE(loaded->observer_enabled());
  EXPECT_TRUE(bitwise_equal(
      loaded->observer()->min_val(), trained->observer()->min_val()));
  EXPECT_TRUE(bitwise_equal(loaded(w), trained(w)));
}

} // namespace
} // namespace qat
