// The QAT workflow on Fashion-MNIST, end to end on a CPU in about a minute:
// train a float MLP, post-training quantize it (calibrate + round to nearest)
// at W8A8 and at 4-bit, and prepare a copy for quantization-aware training.
//
//   fashion_mnist_ptq [--epochs 2] [--seed 0]
//
// Exits non-zero when the float model is not trained (test accuracy < 80%)
// or W8A8 PTQ loses more than one point, so ctest can run it as a check.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "qat/prepare.h"
#include "trainers/data/datasets.h"
#include "trainers/models/classifiers.h"

namespace {

using qat::data::ImageDataset;

double accuracy(qat::models::Mlp& model, const ImageDataset& data) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  for (const auto& idx :
       qat::data::batch_indices(data.size(), 1000, false, 0)) {
    const auto logits = model(data.images.index_select(0, idx));
    correct += logits.argmax(1)
                   .eq(data.labels.index_select(0, idx))
                   .sum()
                   .item<int64_t>();
  }
  return 100.0 * static_cast<double>(correct) /
      static_cast<double>(data.size());
}

void copy_parameters(qat::models::Mlp& from, qat::models::Mlp& to) {
  torch::NoGradGuard no_grad;
  const auto source = from->named_parameters();
  for (auto& p : to->named_parameters())
    p.value().copy_(source[p.key()]);
}

// Weights per output channel and activations per tensor (calibrated), both
// with `bits`; the classifier head stays at 8 bits, as is common practice.
qat::QuantConfig wxax(int bits) {
  qat::LayerQuantSpecs layer, head = qat::preset("w8a8_int8_static");
  layer.weight =
      qat::FakeQuantizerOptions(qat::QuantSpec()
                                    .bits(bits)
                                    .granularity(qat::Granularity::per_channel)
                                    .axis(0));
  layer.input =
      qat::FakeQuantizerOptions(qat::QuantSpec().bits(bits).symmetric(false));
  return {
      {qat::QuantRule::quantize("head", head),
       qat::QuantRule::quantize("fc*", layer)}};
}

} // namespace

int main(int argc, char** argv) {
  int64_t epochs = 2;
  uint64_t seed = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--epochs") {
      epochs = std::stoll(argv[i + 1]);
    } else if (key == "--seed") {
      seed = std::stoull(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: %s [--epochs N] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  torch::manual_seed(seed);
  const auto start = std::chrono::steady_clock::now();
  const auto fm = qat::data::load_fashion_mnist();
  const auto [train, val] = qat::data::split(fm.train, 5000, seed);
  std::printf(
      "Fashion-MNIST: %lld train, %lld validation, %lld test images\n",
      static_cast<long long>(train.size()),
      static_cast<long long>(val.size()),
      static_cast<long long>(fm.test.size()));

  // 1. Float training.
  qat::models::Mlp model;
  torch::optim::Adam optimizer(
      model->parameters(), torch::optim::AdamOptions(1e-3));
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    model->train();
    double loss_sum = 0;
    const auto batches =
        qat::data::batch_indices(train.size(), 128, true, seed + epoch);
    for (const auto& idx : batches) {
      optimizer.zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(
          model(train.images.index_select(0, idx)),
          train.labels.index_select(0, idx));
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
    }
    std::printf(
        "epoch %lld: train loss %.4f, validation accuracy %.2f%%\n",
        static_cast<long long>(epoch + 1),
        loss_sum / static_cast<double>(batches.size()),
        accuracy(model, val));
  }
  const double float_acc = accuracy(model, fm.test);

  // 2. Post-training quantization: calibrate on 20 training batches.
  auto ptq = [&](const qat::QuantConfig& config) {
    qat::models::Mlp quantized;
    copy_parameters(model, quantized);
    qat::prepare(*quantized, config);
    quantized->eval();
    const auto batches =
        qat::data::batch_indices(train.size(), 256, true, seed + 99);
    qat::calibrate(*quantized, [&] {
      for (size_t b = 0; b < 20; ++b)
        quantized(train.images.index_select(0, batches[b]));
    });
    return accuracy(quantized, fm.test);
  };
  const double w8a8 = ptq(wxax(8));
  const double w4a4 = ptq(wxax(4));
  const double w4a8 = ptq(
      {{qat::QuantRule::quantize("head", qat::preset("w8a8_int8")),
        qat::QuantRule::quantize("fc*", qat::preset("w4a8"))}});

  // 3. A copy prepared for QAT with learned (LSQ) 4-bit weight scales, one
  // training step to show it trains.
  qat::models::Mlp qat_model;
  copy_parameters(model, qat_model);
  auto config = wxax(4);
  config.rules[1].specs->weight->estimator(qat::Estimator::lsq);
  const auto report = qat::prepare(*qat_model, config);
  qat_model->train();
  const auto idx = qat::data::batch_indices(train.size(), 128, true, seed)[0];
  const auto loss = torch::nn::functional::cross_entropy(
      qat_model(train.images.index_select(0, idx)),
      train.labels.index_select(0, idx));
  loss.backward();

  std::printf("\nTest accuracy (10000 images):\n");
  std::printf("  float                        %6.2f%%\n", float_acc);
  std::printf("  PTQ W8A8 (static act.)       %6.2f%%\n", w8a8);
  std::printf("  PTQ W4A8 (dynamic act.)      %6.2f%%\n", w4a8);
  std::printf("  PTQ W4A4 (static act.)       %6.2f%%\n", w4a4);
  std::printf(
      "\nPrepared for QAT (loss %.4f after one forward/backward):\n%s",
      loss.item<double>(),
      report.table().c_str());
  std::printf(
      "\n%.1f s\n",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count());

  const bool ok = float_acc >= 80.0 && w8a8 >= float_acc - 1.0;
  if (!ok)
    std::fprintf(
        stderr,
        "FAILED: float accuracy below 80%% or W8A8 PTQ lost more than a point\n");
  return ok ? 0 : 1;
}
