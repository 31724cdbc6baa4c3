// Quantized modules: bit-identical to the float modules with quantizers off,
// equal to an independent composition of ATen ops with them on, Conv+BN
// folding against conv followed by BN, and the presets' specs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "ops/ops.h"
#include "qat/calibration/gptq.h"
#include "qat/convert.h"
#include "qat/export/safetensors.h"
#include "qat/modules/activation.h"
#include "qat/modules/conv.h"
#include "qat/modules/embedding.h"
#include "qat/modules/linear.h"
#include "qat/prepare.h"
#include "tests/test_helpers.h"
#include "trainers/models/classifiers.h"

namespace qat {
namespace {

using testing::bitwise_equal;

// ATen's per-channel fake-quant of the rows of x (int8, symmetric, zero point
// 0) with the runtimes' symmetric scale max|row| / 127: the independent
// reference for per-channel weights and per-token activations.
torch::Tensor aten_int8_rows(const torch::Tensor& x) {
  const auto rows = x.reshape({-1, x.size(-1)});
  const auto scale = (rows.abs().amax(1) / 127)
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
  // uint8 symmetric: zero point 128, scale max|x| / 127.
  const float scale = relu.abs().max().item<float>() / 127.0f;
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
  // Without a weight quantizer it is conv then BN exactly.
  EXPECT_TRUE(bitwise_equal(folded(x), ref.eval(x)));
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

// Synchronous BN: two "ranks" with half the batch each, their statistics
// gathered (the other rank's recorded from its own forward), normalise as
// BatchNorm2d over the whole batch and update the running statistics as it
// does (the gradients, through c10d: test_trainer's Distributed tests).
TEST(QuantModules, SynchronousBnEqualsBnOverTheWholeBatch) {
  ConvBn ref;
  ref.bn->train();
  torch::nn::init::uniform_(ref.bn->weight, 0.5, 1.5);
  torch::nn::init::uniform_(ref.bn->bias, -0.5, 0.5);
  const auto x = torch::randn({6, 4, 8, 8}) * 2 + 1;

  auto rank0 = QuantConv2d::from_float(ref.conv, {}, ref.bn);
  auto local_only = QuantConv2d::from_float(ref.conv, {}, ref.bn);
  auto probe = QuantConv2d::from_float(ref.conv, {}, ref.bn);
  const auto y_ref = ref.bn(ref.conv(x)); // updates ref's statistics
  const auto half = [&](const torch::Tensor& t, int r) {
    return t.narrow(0, 3 * r, 3);
  };
  // Rank 1's statistics as its own forward computes them (a gather of one).
  torch::Tensor rank1_stats;
  {
    probe->set_batch_stats_gather([&](const torch::Tensor& local) {
      rank1_stats = local.detach().clone();
      return local.unsqueeze(0);
    });
    probe->train();
    probe(half(x, 1));
  }
  rank0->set_batch_stats_gather([&](const torch::Tensor& local) {
    return torch::stack({local, rank1_stats});
  });
  rank0->train();
  const auto y0 = rank0(half(x, 0));
  EXPECT_TRUE(torch::allclose(y0, half(y_ref, 0), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(
      rank0->batch_norm->running_mean, ref.bn->running_mean, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(
      rank0->batch_norm->running_var, ref.bn->running_var, 1e-5, 1e-6));
  // Without a gather the module normalises with its own half: different.
  local_only->train();
  EXPECT_FALSE(
      torch::allclose(local_only(half(x, 0)), half(y_ref, 0), 1e-3, 1e-3));
}

// With the weight quantizer on, the Conv+BN module computes what the folded,
// quantized conv that will be served computes: in eval mode, in training with
// frozen BN statistics, and after convert(); with live statistics it is BN
// over the batch of conv(x, fq(W * gamma')) / gamma' + b.
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

  folded->train();
  folded->freeze_bn_stats();
  const auto y_frozen = folded(x);
  EXPECT_TRUE(torch::allclose(y_frozen, expected, 1e-4, 1e-5))
      << (y_frozen - expected).abs().max();
  y_frozen.sum().backward();
  EXPECT_GT(folded->weight.grad().abs().sum().item<float>(), 0.0f);

  folded->freeze_bn_stats(false);
  const auto gamma = ref.bn->weight.detach() /
      torch::sqrt(ref.bn->running_var + ref.bn->options.eps());
  const auto live = torch::batch_norm(
      torch::conv2d(x, w_q, {}, 1, 1) / gamma.view({1, -1, 1, 1}) +
          ref.conv->bias.detach().view({1, -1, 1, 1}),
      ref.bn->weight.detach(),
      ref.bn->bias.detach(),
      ref.bn->running_mean.clone(),
      ref.bn->running_var.clone(),
      /*training=*/true,
      0.1,
      1e-5,
      false);
  const auto y_live = folded(x);
  EXPECT_TRUE(torch::allclose(y_live, live, 1e-4, 1e-4))
      << (y_live - live).abs().max();

  // convert(): the served conv itself, int4 codes of the folded weight
  // (folded with the running statistics the live batch just updated).
  folded->eval();
  const auto before = folded(x);
  const auto w_now = folded->to_float()->weight.detach().flatten(1);
  folded->convert_weight();
  EXPECT_TRUE(bitwise_equal(
      folded->quantized_weight->dequantize(),
      ops::fake_quant_affine(
          w_now, wq->scale(), wq->zero_point(), 0, 0, -8, 7)));
  const auto after = folded(x);
  EXPECT_TRUE(torch::allclose(after, before, 1e-4, 1e-5))
      << (after - before).abs().max();
}

// PTQ calibrates with fake-quant off (the unfolded conv then BN runs), yet
// the weight observer must see the folded weight, the one quantized later.
TEST(QuantModules, CalibrationObservesTheFoldedWeight) {
  ConvBn ref;
  LayerQuantSpecs specs;
  specs.weight = FakeQuantizerOptions(
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0));
  const auto x = torch::randn({2, 4, 8, 8});
  auto calibrated = QuantConv2d::from_float(ref.conv, specs, ref.bn);
  calibrated->eval();
  calibrate(*calibrated, [&] { calibrated(x); });
  // Reference: an observer fed the served (folded) weight directly.
  Observer observer(specs.weight->spec());
  observer->observe(calibrated->to_float()->weight.detach().flatten(1));
  EXPECT_TRUE(bitwise_equal(
      calibrated->quantizers.weight->scale(), observer->qparams().scale));
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

// A small language-model-shaped network built from qat layers (float until
// prepared): embedding, two blocks in a ModuleList, an activation, a head.
struct TinyLm : torch::nn::Module {
  QuantEmbedding embed{nullptr};
  QuantLinear fc0{nullptr}, fc1{nullptr}, head{nullptr};
  QuantActivation act{nullptr};
  TinyLm() {
    torch::manual_seed(9);
    embed = register_module(
        "embed",
        QuantEmbedding(
            torch::nn::EmbeddingOptions(50, 128), LayerQuantSpecs{}));
    auto blocks = register_module("blocks", torch::nn::ModuleList());
    fc0 = QuantLinear(torch::nn::LinearOptions(128, 128), LayerQuantSpecs{});
    fc1 = QuantLinear(torch::nn::LinearOptions(128, 128), LayerQuantSpecs{});
    blocks->push_back(fc0);
    blocks->push_back(fc1);
    act = register_module(
        "act", QuantActivation(ActivationKind::relu, LayerQuantSpecs{}));
    head = register_module(
        "lm_head",
        QuantLinear(torch::nn::LinearOptions(128, 50), LayerQuantSpecs{}));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto x = embed(ids);
    x = act(fc0(x));
    x = act(fc1(x));
    return head(x);
  }
};

QuantConfig tiny_config() {
  LayerQuantSpecs rows, activations;
  rows.weight = FakeQuantizerOptions(
      QuantSpec().granularity(Granularity::per_channel).axis(0));
  activations.output = FakeQuantizerOptions(QuantSpec().is_signed(false));
  return {{
      QuantRule::skip("lm_head"),
      QuantRule::quantize("re:blocks\\.[0-9]+", preset("w4a16_g128"), "Linear"),
      QuantRule::quantize("embed*", rows),
      QuantRule::quantize("*", activations, "Activation"),
  }};
}

TEST(Prepare, TheFirstMatchingRuleDecidesEachLayer) {
  TinyLm model;
  const auto report = prepare(model, tiny_config());
  std::map<std::string, int> rule_of;
  for (const auto& l : report.layers)
    rule_of[l.name] = l.rule;
  EXPECT_EQ(
      rule_of,
      (std::map<std::string, int>{
          {"embed", 2},
          {"blocks.0", 1},
          {"blocks.1", 1},
          {"act", 3},
          {"lm_head", 0}}));
  EXPECT_EQ(
      model.fc0->specs.weight->spec(), preset("w4a16_g128").weight->spec());
  EXPECT_FALSE(model.head->specs.weight.has_value());
  EXPECT_TRUE(model.head->quantizers.weight.is_empty());
  EXPECT_FALSE(model.act->quantizers.output.is_empty());
  const std::string table = report.table();
  EXPECT_NE(table.find("lm_head"), std::string::npos);
  EXPECT_NE(
      table.find("int4 sym per_group(axis=-1, group=128)"), std::string::npos)
      << table;
  // Re-preparing replaces the quantizers rather than adding to them.
  prepare(model, tiny_config());
  EXPECT_EQ(model.fc0->named_children().size(), 1u);
}

TEST(Prepare, QuantizersOffKeepTheOutputsBitIdentical) {
  TinyLm model;
  const auto ids = torch::randint(0, 50, {3, 11});
  const auto before = model.forward(ids);
  prepare(model, tiny_config());
  set_fake_quant(model, false);
  EXPECT_TRUE(bitwise_equal(model.forward(ids), before));
}

TEST(Prepare, CalibrateFreezesObserversAndQuantizes) {
  TinyLm model;
  const auto ids = torch::randint(0, 50, {4, 16});
  const auto float_out = model.forward(ids);
  prepare(model, tiny_config());
  calibrate(model, [&] { model.forward(ids); });
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* fq = m->as<FakeQuantizerImpl>()) {
      EXPECT_FALSE(fq->observer_enabled());
      EXPECT_TRUE(fq->fake_quant_enabled());
    }
  }
  const auto ptq_out = model.forward(ids);
  EXPECT_FALSE(torch::equal(ptq_out, float_out));
  const double relative =
      ((ptq_out - float_out).norm() / float_out.norm()).item<double>();
  EXPECT_LT(relative, 0.2) << relative;
}

TEST(Prepare, BadConfigsAndFloatLayersAreRefused) {
  auto expect_refused = [](torch::nn::Module& model,
                           const QuantConfig& config,
                           const std::string& words) {
    try {
      prepare(model, config);
      ADD_FAILURE() << "accepted; expected an error about '" << words << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos)
          << e.what();
    }
  };
  TinyLm model;
  expect_refused(
      model,
      {{QuantRule::quantize("blocks.9*", preset("w8a8_int8"))}},
      "rule 0 ('blocks.9*') matches no layer");
  expect_refused(
      model,
      {{QuantRule::quantize("re:([", preset("w8a8_int8"))}},
      "invalid regex");
  expect_refused(
      model,
      {{QuantRule::quantize("*", preset("w8a8_int8"), "Dense")}},
      "unknown layer type 'Dense'");
  // 128-wide rows split into groups of 128 and 32, not 48: refused before
  // any layer changed.
  LayerQuantSpecs groups_of_48;
  groups_of_48.weight =
      FakeQuantizerOptions(QuantSpec()
                               .bits(4)
                               .granularity(Granularity::per_group)
                               .axis(-1)
                               .group_size(48));
  expect_refused(
      model,
      {{QuantRule::quantize("blocks.*", preset("w4a16_g128")),
        QuantRule::quantize("embed", preset("gguf_q4_0")),
        QuantRule::quantize("lm_head", groups_of_48)}},
      "rule 2 ('lm_head') does not fit layer 'lm_head': the Linear's weight, "
      "seen as [50, 128], cannot be split into groups of 48");
  // Nothing was changed by the refused configs.
  EXPECT_TRUE(model.fc0->quantizers.weight.is_empty());

  struct FloatNet : torch::nn::Module {
    torch::nn::Linear fc{nullptr};
    FloatNet() {
      fc = register_module("fc", torch::nn::Linear(4, 4));
    }
  } float_net;
  expect_refused(float_net, {}, "layer 'fc' is a torch::nn::Linear");
}

// What is trained is what is served: after convert() the model computes with
// dequantized real low-precision weights and gives the same bits.
TEST(Convert, ConvertedModelComputesTheSameBits) {
  TinyLm model;
  prepare(model, tiny_config());
  const auto ids = torch::randint(0, 50, {3, 9});
  calibrate(model, [&] { model.forward(ids); });
  const auto fake_quantized = model.forward(ids);
  EXPECT_EQ(convert(model), 3); // embed, blocks.0, blocks.1 (lm_head skipped)
  EXPECT_TRUE(bitwise_equal(model.forward(ids), fake_quantized));

  const auto weights = quantized_weights(model);
  ASSERT_EQ(weights.size(), 3u);
  const QuantizedWeight& w4 = *weights.at("blocks.0");
  EXPECT_EQ(w4.data.scalar_type(), torch::kByte); // packed two per byte
  EXPECT_EQ(w4.data.numel(), 128 * 128 / 2);
  EXPECT_EQ(weights.at("embed")->data.scalar_type(), torch::kChar);
  EXPECT_LT(w4.storage_bytes(), 128 * 128 * 4 / 6);
}

TEST(Convert, EveryPresetMatchesFakeQuantAndAtenCodes) {
  torch::manual_seed(12);
  const auto x = torch::randn({4, 256});
  for (const auto& name : preset_names()) {
    torch::nn::Linear fc(256, 32);
    auto layer = QuantLinear::from_float(fc, preset(name));
    calibrate(*layer, [&] { layer(x); });
    const auto fake_quantized = layer(x);
    layer->convert_weight();
    EXPECT_TRUE(bitwise_equal(layer(x), fake_quantized)) << name;
  }
  // int4 per channel: the codes times the scales are ATen's fake-quant.
  torch::nn::Linear fc(64, 16);
  LayerQuantSpecs int4;
  int4.weight = FakeQuantizerOptions(
      QuantSpec().bits(4).granularity(Granularity::per_channel).axis(0));
  auto layer = QuantLinear::from_float(fc, int4);
  layer->convert_weight();
  const QuantizedWeight& q = *layer->quantized_weight;
  const auto codes = q.codes();
  EXPECT_GE(codes.min().item<int>(), -8);
  EXPECT_LE(codes.max().item<int>(), 7);
  EXPECT_TRUE(bitwise_equal(
      q.dequantize(),
      at::fake_quantize_per_channel_affine(
          fc->weight.detach(), q.scale, q.zero_point, 0, -8, 7)));
}

// The GGUF presets train on exactly what llama.cpp stores: the converted
// weight is ggml's block bytes, and serving them changes no bit.
TEST(Convert, GgufPresetsConvertToGgmlBlocks) {
  torch::manual_seed(21);
  const auto x = torch::randn({5, 512});
  // Each type: block size, bytes a block, and the range of its codes.
  for (const auto& [name, block, bytes, lo, hi] :
       {std::tuple{"gguf_q8_0", 32, 34, -127, 127},
        std::tuple{"gguf_q4_0", 32, 18, -8, 7},
        std::tuple{"gguf_q5_0", 32, 22, -16, 15},
        std::tuple{"gguf_q5_1", 32, 24, 0, 31},
        std::tuple{"gguf_q4_k", 256, 144, 0, 15},
        std::tuple{"gguf_q5_k", 256, 176, 0, 31},
        std::tuple{"gguf_q6_k", 256, 210, -32, 31}}) {
    torch::nn::Linear fc(512, 24);
    auto layer = QuantLinear::from_float(fc, preset(name));
    const auto fake_quantized = layer(x);
    EXPECT_TRUE(bitwise_equal(
        fake_quantized,
        torch::nn::functional::linear(
            x,
            ops::fake_quant_gguf(fc->weight.detach(), name + 5),
            fc->bias.detach())));
    layer->convert_weight();
    EXPECT_TRUE(bitwise_equal(layer(x), fake_quantized)) << name;
    const QuantizedWeight& q = *layer->quantized_weight;
    const int64_t blocks = 512 / block;
    EXPECT_EQ(q.data.sizes(), (std::vector<int64_t>{24, blocks * bytes}))
        << name;
    EXPECT_EQ(q.scale.sizes(), (std::vector<int64_t>{24, blocks})) << name;
    // The blocks hold their scales: e.g. 4.5 (Q4_0) or 8.5 (Q8_0) bits a
    // weight.
    EXPECT_EQ(q.storage_bytes(), 24 * blocks * bytes) << name;
    const auto codes = q.codes();
    EXPECT_GE(codes.min().item<int>(), lo) << name;
    EXPECT_LE(codes.max().item<int>(), hi) << name;
    // For the symmetric 32-value types, codes * half scale is the
    // dequantized weight.
    if (block == 32 && std::string(name) != "gguf_q5_1") {
      EXPECT_TRUE(bitwise_equal(
          (codes.to(torch::kFloat).view({24, blocks, 32}) *
           q.scale.unsqueeze(-1))
              .view({24, 512}),
          q.dequantize()))
          << name;
    }
  }
  // A K-quant layer trained after calibration: its representation is kept,
  // and the export stores it with the codes of the trained weight, so the
  // converted layer computes what the trained one computed.
  for (const char* name : {"gguf_q4_k", "gguf_q5_k", "gguf_q6_k"}) {
    torch::nn::Linear fc(512, 8);
    auto layer = QuantLinear::from_float(fc, preset(name));
    calibrate(*layer, [&] { layer(x); });
    const auto reps = layer->quantizers.weight->gguf_representation().clone();
    ASSERT_GT(reps.numel(), 0) << name;
    {
      torch::NoGradGuard no_grad;
      layer->weight.add_(0.01 * torch::randn_like(layer->weight));
    }
    const auto trained = layer(x);
    EXPECT_TRUE(
        torch::equal(layer->quantizers.weight->gguf_representation(), reps))
        << name << ": the representation moved without an observer";
    layer->convert_weight();
    EXPECT_TRUE(bitwise_equal(layer(x), trained)) << name;
  }
  EXPECT_THROW(
      QuantSpec::gguf_block(GgufRule::q4_0).group_size(64).validate(),
      std::invalid_argument);
  EXPECT_EQ(
      QuantSpec::gguf_block(GgufRule::q8_0).to_string(),
      "gguf_q8_0 int8 sym per_group(axis=-1, group=32) dynamic");
}

TEST(Convert, QuantizedWeightsRoundTripThroughSafetensors) {
  torch::nn::Linear fc(32, 8);
  LayerQuantSpecs int4_groups;
  int4_groups.weight =
      FakeQuantizerOptions(QuantSpec()
                               .bits(4)
                               .granularity(Granularity::per_group)
                               .axis(-1)
                               .group_size(16));
  auto layer = QuantLinear::from_float(fc, int4_groups);
  layer->convert_weight();
  const QuantizedWeight& q = *layer->quantized_weight;
  const std::string path =
      "/tmp/qat_convert_" + std::to_string(::getpid()) + ".safetensors";
  safetensors::write(
      path,
      {{"weight_packed", q.data},
       {"weight_scale", q.scale},
       {"weight_zero_point", q.zero_point}});
  const auto file = safetensors::File::read(path);
  std::remove(path.c_str());
  QuantizedWeight back = q;
  back.data = file.tensor("weight_packed");
  back.scale = file.tensor("weight_scale");
  back.zero_point = file.tensor("weight_zero_point");
  EXPECT_TRUE(bitwise_equal(back.dequantize(), q.dequantize()));
  EXPECT_TRUE(torch::equal(back.codes(), q.codes()));
}

// A converted model saved and loaded into its prepared twin computes the same
// bits, whatever the head's format family (FP8, GGUF blocks, NVFP4); a file
// that does not fit is refused with the layer named.
TEST(Convert, ConvertedModelsSaveAndLoad) {
  const std::string path =
      "/tmp/qat_converted_" + std::to_string(::getpid()) + ".safetensors";
  const auto ids = torch::randint(0, 50, {3, 9});
  QuantConfig config;
  for (const LayerQuantSpecs& head :
       {preset("fp8_e4m3"),
        LayerQuantSpecs{
            FakeQuantizerOptions(QuantSpec::gguf_block(GgufRule::q4_0)),
            std::nullopt,
            std::nullopt},
        preset("nvfp4_a16")}) {
    SCOPED_TRACE(head.weight->spec().to_string());
    TinyLm model;
    config = tiny_config();
    config.rules.push_back(QuantRule::quantize("lm_head", head));
    config.rules.erase(config.rules.begin()); // lm_head was skipped
    prepare(model, config);
    calibrate(model, [&] { model.forward(ids); });
    convert(model);
    const auto served = model.forward(ids);
    save_converted(model, path);

    TinyLm twin; // same float weights (same seed), not calibrated
    prepare(twin, config);
    load_converted(twin, path);
    EXPECT_TRUE(bitwise_equal(twin.forward(ids), served));
    EXPECT_TRUE(torch::equal(
        twin.fc0->quantized_weight->codes(),
        model.fc0->quantized_weight->codes()));
    EXPECT_TRUE(torch::equal(
        twin.head->quantized_weight->data.view(torch::kByte),
        model.head->quantized_weight->data.view(torch::kByte)));
  }

  TinyLm other;
  prepare(other, {{QuantRule::quantize("blocks.*", preset("w8a8_int8"))}});
  try {
    load_converted(other, path);
    ADD_FAILURE() << "a file with other specs was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(
        std::string(e.what()).find(path + ": layer 'blocks.0': saved as"),
        std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(other.fc0->quantized_weight.has_value());
  std::remove(path.c_str());
}

// GPTQ on every Linear layer with a weight quantizer: each layer's latent
// weight is one its quantizer maps to GPTQ's quantized weight (and convert()
// serves that, bit for bit), off the grid points as a float weight is, and each layer's output error on
// the calibration inputs is below round to nearest's. A format GPTQ cannot
// serve is refused with the layer named, before anything changes.
TEST(Gptq, CalibratesEveryLinearOntoItsGrid) {
  TinyLm model;
  prepare(model, tiny_config());
  torch::manual_seed(4);
  const auto ids = torch::randint(0, 50, {4, 16});
  const auto reports = calibrate_gptq(
      model, [&] { model.forward(ids); }, GptqOptions().block_size(48));
  ASSERT_EQ(reports.size(), 2u);
  for (const auto& r : reports) {
    EXPECT_EQ(r.tokens, 64) << r.name;
    EXPECT_LT(r.error_vs_rtn, 1.0) << r.name;
    EXPECT_GT(r.error_vs_rtn, 0.0) << r.name;
  }
  EXPECT_EQ(reports[0].name, "blocks.0");
  for (QuantLinear* fc : {&model.fc0, &model.fc1}) {
    auto& fq = *(*fc)->quantizers.weight;
    ASSERT_FALSE(fq.observer_enabled());
    const auto quantized = fq.forward((*fc)->weight);
    EXPECT_FALSE(torch::equal(quantized, (*fc)->weight));
    EXPECT_TRUE(bitwise_equal(fq.forward(quantized), quantized));
  }
  torch::NoGradGuard no_grad;
  const auto fake_quantized = model.forward(ids);
  convert(model);
  EXPECT_TRUE(bitwise_equal(model.forward(ids), fake_quantized));

  TinyLm gguf;
  prepare(
      gguf,
      {{QuantRule::quantize(
          "blocks.*",
          LayerQuantSpecs{
              FakeQuantizerOptions(QuantSpec::gguf_block(GgufRule::q4_0)),
              std::nullopt,
              std::nullopt})}});
  const auto before = gguf.fc0->weight.clone();
  const std::string message = testing::error_message<std::invalid_argument>(
      [&] { calibrate_gptq(gguf, [&] { gguf.forward(ids); }); });
  EXPECT_NE(message.find("gptq: layer 'blocks.0'"), std::string::npos)
      << message;
  EXPECT_NE(message.find("GGUF blocks take their scales"), std::string::npos)
      << message;
  EXPECT_TRUE(torch::equal(gguf.fc0->weight, before));
  EXPECT_TRUE(gguf.fc0->quantizers.weight->observer_enabled());
}

TEST(Models, ResNetLayersAreNamedAndQuantizable) {
  torch::manual_seed(3);
  models::ResNet net;
  std::vector<std::string> convs;
  for (const auto& item : net->named_modules("", /*include_self=*/false)) {
    if (auto* layer = dynamic_cast<QuantizedLayer*>(item.value().get());
        layer && std::string(layer->layer_type()) == "Conv2d")
      convs.push_back(item.key());
  }
  EXPECT_EQ(
      convs,
      (std::vector<std::string>{
          "stem",
          "stages.0.0.conv1",
          "stages.0.0.conv2",
          "stages.1.0.conv1",
          "stages.1.0.conv2",
          "stages.1.0.shortcut"}));
  const auto images = torch::rand({4, 1, 28, 28});
  const auto labels = torch::randint(0, 10, {4});
  EXPECT_EQ(net->forward(images).sizes(), (std::vector<int64_t>{4, 10}));

  prepare(
      *net,
      {{QuantRule::quantize("*", preset("w8a8_int8_static"), "Conv2d"),
        QuantRule::quantize("head", preset("w8a8_int8"))}});
  net->train();
  const auto loss =
      torch::nn::functional::cross_entropy(net->forward(images), labels);
  loss.backward();
  // Gradients reach the first layer through every fake-quantized conv.
  const auto stem_grad = net->named_parameters()["stem.weight"].grad();
  ASSERT_TRUE(stem_grad.defined());
  EXPECT_GT(stem_grad.abs().sum().item<float>(), 0.0f);
}

} // namespace
} // namespace qat
