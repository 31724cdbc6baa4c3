// Quantized modules: bit-identical to the float modules with quantizers off,
// equal to an independent composition of ATen ops with them on, Conv+BN
// folding against conv followed by BN, and the presets' specs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/ops.h"
#include "qat/modules/activation.h"
#include "qat/modules/conv.h"
#include "qat/modules/embedding.h"
#include "qat/modules/linear.h"
#include "tests/test_helpers.h"

namespace qat {
namespace {

using testing::bitwise_equal;

void set_fake_quant(torch::nn::Module& module, bool on) {
  for (const auto& child : module.modules()) {
    if (auto* fq = child->as<FakeQuantizerImpl>())
      fq->enable_fake_quant(on);
  }
}

// ATen's per-channel fake-quant of the rows of x (int8, symmetric, zero point
// 0) with torch.ao's symmetric scale max|row| / 127.5: the independent
// reference for per-channel weights and per-token activations.
torch::Tensor aten_int8_rows(const torch::Tensor& x) {
  const auto rows = x.reshape({-1, x.size(-1)});
  const auto scale = (rows.abs().amax(1) / 127.5)
                         .clamp_min(std::numeric_limits<float>::epsilon());
  return at::fake_quantize_per_channel_affine(
             rows,
             scale,
             torch::zeros({rows.size(0)}, torch::kInt),
             0,
             -128,
             127)
      .view(x.sizes());
}

TEST(QuantModules, QuantizersOffGiveTheFloatModuleBitForBit) {
  torch::manual_seed(1);
  torch::nn::Linear fc(48, 16);
  auto qfc = QuantLinear::from_float(fc, preset("w8a8_int8"));
  set_fake_quant(*qfc, false);
  const auto x = torch::randn({5, 48});
  EXPECT_TRUE(bitwise_equal(qfc(x), fc(x)));

  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(3, 8, 3).padding(1).stride(2));
  auto qconv = QuantConv2d::from_float(conv, preset("w8a8_int8_static"));
  set_fake_quant(*qconv, false);
  const auto image = torch::randn({2, 3, 9, 9});
  EXPECT_TRUE(bitwise_equal(qconv(image), conv(image)));

  torch::nn::Embedding table(100, 32);
  LayerQuantSpecs int4_rows;
  int4_rows.weight = FakeQuantizerOptions(
      QuantSpec().bits(4).granularity(Granularity::per_channel));
  auto qtable = QuantEmbedding::from_float(table, int4_rows);
  set_fake_quant(*qtable, false);
  const auto ids = torch::randint(0, 100, {4, 7});
  EXPECT_TRUE(bitwise_equal(qtable(ids), table(ids)));

  EXPECT_TRUE(bitwise_equal(qfc->to_float()->weight, fc->weight));
  EXPECT_TRUE(bitwise_equal(qconv->to_float()->bias, conv->bias));
}

TEST(QuantModules, LinearW8A8EqualsAtenComposition) {
  torch::manual_seed(2);
  torch::nn::Linear fc(64, 24);
  auto qfc = QuantLinear::from_float(fc, preset("w8a8_int8"));
  const auto x = torch::randn({3, 5, 64});
  const auto expected = torch::nn::functional::linear(
      aten_int8_rows(x), aten_int8_rows(fc->weight.detach()), fc->bias);
  EXPECT_TRUE(bitwise_equal(qfc(x), expected));
}

TEST(QuantModules, EmbeddingQuantizesEachRow) {
  torch::manual_seed(3);
  torch::nn::Embedding table(50, 16);
  LayerQuantSpecs specs;
  specs.weight = FakeQuantizerOptions(
      QuantSpec().granularity(Granularity::per_channel).axis(0));
  auto qtable = QuantEmbedding::from_float(table, specs);
  const auto ids = torch::randint(0, 50, {6});
  const auto expected = torch::nn::functional::embedding(
      ids, aten_int8_rows(table->weight.detach()));
  EXPECT_TRUE(bitwise_equal(qtable(ids), expected));
  EXPECT_THROW(
      QuantEmbedding(torch::nn::EmbeddingOptions(4, 4), preset("w8a8_int8")),
      std::invalid_argument);
}

TEST(QuantModules, ActivationQuantizesItsOutput) {
  LayerQuantSpecs specs;
  specs.output = FakeQuantizerOptions(QuantSpec().is_signed(false));
  QuantActivation act(ActivationKind::relu, specs);
  const auto x = torch::randn({200});
  const auto relu = torch::relu(x);
  // uint8 symmetric: zero point 128, scale max|x| / 127.5.
  const float scale = relu.abs().max().item<float>() / 127.5f;
  EXPECT_TRUE(bitwise_equal(
      act(x), at::fake_quantize_per_tensor_affine(relu, scale, 128, 0, 255)));
  EXPECT_THROW(
      QuantActivation(ActivationKind::gelu, preset("w4a16_g128")),
      std::invalid_argument);
}

struct ConvBn {
  torch::nn::Conv2d conv{torch::nn::Conv2dOptions(4, 6, 3).padding(1)};
  torch::nn::BatchNorm2d bn{6};
  ConvBn() {
    torch::manual_seed(4);
    torch::NoGradGuard no_grad;
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.uniform_(-0.5, 0.5);
    bn->running_mean.uniform_(-0.3, 0.3);
    bn->running_var.uniform_(0.5, 2.0);
  }
  torch::Tensor eval(const torch::Tensor& x) {
    bn->eval();
    return bn(conv(x));
  }
};

TEST(QuantModules, ConvBnFoldingMatchesConvThenBn) {
  ConvBn ref;
  const auto x = torch::randn({3, 4, 8, 8});
  auto folded = QuantConv2d::from_float(ref.conv, {}, ref.bn);

  folded->eval();
  EXPECT_TRUE(torch::allclose(folded(x), ref.eval(x), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(folded->to_float()(x), ref.eval(x), 1e-5, 1e-5));

  // Training with frozen statistics normalises with the running ones and
  // leaves them alone.
  folded->train();
  folded->freeze_bn_stats();
  const auto mean_before = folded->batch_norm->running_mean.clone();
  EXPECT_TRUE(torch::allclose(folded(x), ref.eval(x), 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(folded->batch_norm->running_mean, mean_before));

  // Training with live statistics normalises with the batch's and updates the
  // running ones as BatchNorm2d does.
  folded->freeze_bn_stats(false);
  ref.bn->train();
  const auto expected = ref.bn(ref.conv(x));
  EXPECT_TRUE(torch::allclose(folded(x), expected, 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(
      folded->batch_norm->running_mean, ref.bn->running_mean, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(
      folded->batch_norm->running_var, ref.bn->running_var, 1e-5, 1e-6));
}

// With the weight quantizer on, the Conv+BN module computes what the folded,
// quantized conv that will be served computes.
TEST(QuantModules, FoldedQuantizedConvBnIsWhatIsServed) {
  ConvBn ref;
  LayerQuantSpecs specs;
  specs.weight = FakeQuantizerOptions(
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0));
  auto folded = QuantConv2d::from_float(ref.conv, specs, ref.bn);
  folded->eval();
  const auto x = torch::randn({2, 4, 8, 8});
  const auto y = folded(x); // observes the folded weight
  const auto served = folded->to_float();
  const auto& wq = folded->quantizers.weight;
  const auto w = served->weight.detach();
  const auto w_q = ops::fake_quant_affine(
                       w.flatten(1), wq->scale(), wq->zero_point(), 0, 0, -8, 7)
                       .view(w.sizes());
  const auto expected = torch::conv2d(x, w_q, served->bias, 1, 1);
  EXPECT_TRUE(torch::allclose(y, expected, 1e-4, 1e-5))
      << (y - expected).abs().max();
}

TEST(QuantModules, PresetsGiveTheDocumentedSpecs) {
  const auto w4 = preset("w4a16_g128");
  EXPECT_EQ(
      w4.weight->spec(),
      QuantSpec()
          .bits(4)
          .granularity(Granularity::per_group)
          .axis(-1)
          .group_size(128));
  EXPECT_FALSE(w4.input.has_value());
  const auto w8 = preset("w8a8_int8");
  EXPECT_EQ(
      w8.weight->spec(), QuantSpec().granularity(Granularity::per_channel));
  EXPECT_TRUE(w8.input->spec().dynamic());
  EXPECT_EQ(w8.input->spec().granularity(), Granularity::per_token);
  EXPECT_FALSE(preset("w8a8_int8_static").input->spec().dynamic());
  EXPECT_EQ(preset("w4a8").weight->spec().bits(), 4);
  EXPECT_EQ(preset("fp8_e4m3").input->spec().format(), NumberFormat::fp8_e4m3);
  EXPECT_EQ(
      describe(w4),
      "weight int4 sym per_group(axis=-1, group=128) (ste); input -; output -");
  try {
    preset("w3a3");
    ADD_FAILURE() << "unknown preset accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(
        std::string(e.what()).find("known presets: w8a8_int8"),
        std::string::npos)
        << e.what();
  }
  for (const auto& name : preset_names()) {
    torch::nn::Linear fc(256, 8);
    EXPECT_NO_THROW(
        QuantLinear::from_float(fc, preset(name))(torch::randn({2, 256})))
        << name;
  }
}

} // namespace
} // namespace qat
