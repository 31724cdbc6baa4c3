// A Llama-style decoder trained from scratch on the King James Bible (byte
// tokens), then quantized: the language-model half of the workflow on a CPU in
// about a minute.
//
//   llama_kjv [--steps 300] [--seed 0] [--out DIR]
//
// 1. trains the float decoder and reports validation loss against the uniform
//    baseline ln(256) = 5.545 nats a byte;
// 2. post-training quantizes the transformer blocks (GGUF Q4_0 weights, the
//    format llama.cpp serves) and reports the validation loss again;
// 3. with --out, saves config.json + model.safetensors (Hugging Face names:
//    transformers loads the folder as a LlamaForCausalLM).
// Exits non-zero when the float validation loss is not below half the
// uniform baseline, so ctest can run it as a check.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "qat/prepare.h"
#include "trainers/data/text.h"
#include "trainers/models/llama.h"
#include "trainers/models/weights.h"

namespace {

using qat::models::LlamaForCausalLM;

constexpr int64_t kContext = 64;

double next_token_loss(LlamaForCausalLM& lm, const torch::Tensor& windows) {
  const auto inputs = windows.narrow(1, 0, kContext);
  const auto targets = windows.narrow(1, 1, kContext);
  return torch::nn::functional::cross_entropy(
             lm(inputs).reshape({-1, lm->config().vocab_size()}),
             targets.reshape(-1))
      .item<double>();
}

// Mean loss over fixed validation windows (the same for every model).
double validation_loss(LlamaForCausalLM& lm, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  lm->eval();
  double sum = 0;
  constexpr int kBatches = 8;
  for (int b = 0; b < kBatches; ++b)
    sum += next_token_loss(
        lm, qat::data::sample_windows(tokens, 64, kContext, 1000 + b));
  return sum / kBatches;
}

std::string sample(LlamaForCausalLM& lm, const std::string& prompt) {
  const qat::data::ByteTokenizer tokenizer;
  lm->eval();
  const auto tokens = lm->generate(tokenizer.encode(prompt).unsqueeze(0), 60);
  std::string text = tokenizer.decode(tokens[0]);
  for (char& c : text)
    c = c == '\n' ? '|' : c;
  return text;
}

} // namespace

int main(int argc, char** argv) {
  int64_t steps = 300;
  uint64_t seed = 0;
  std::string out_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--steps") {
      steps = std::stoll(argv[i + 1]);
    } else if (key == "--seed") {
      seed = std::stoull(argv[i + 1]);
    } else if (key == "--out") {
      out_dir = argv[i + 1];
    } else {
      std::fprintf(
          stderr, "usage: %s [--steps N] [--seed N] [--out DIR]\n", argv[0]);
      return 2;
    }
  }
  torch::manual_seed(seed);
  const auto start = std::chrono::steady_clock::now();
  const auto seconds = [&] {
    return std::chrono::duration<double>(
               std::chrono::steady_clock::now() - start)
        .count();
  };
  const auto kjv = qat::data::load_kjv();
  std::printf(
      "KJV: %lld training bytes, %lld validation bytes\n",
      static_cast<long long>(kjv.train.numel()),
      static_cast<long long>(kjv.validation.numel()));

  const auto config = qat::models::LlamaConfig()
                          .hidden_size(128)
                          .intermediate_size(352)
                          .num_hidden_layers(2)
                          .num_attention_heads(4)
                          .num_key_value_heads(2)
                          .max_position_embeddings(256);
  LlamaForCausalLM lm(config);
  const double uniform = std::log(256.0);
  std::printf(
      "decoder: %lld parameters; uniform baseline %.3f nats/byte; "
      "before training %.3f\n",
      static_cast<long long>([&] {
        int64_t n = 0;
        for (const auto& p : lm->parameters())
          n += p.numel();
        return n;
      }()),
      uniform,
      validation_loss(lm, kjv.validation));

  // AdamW, linear warm-up then cosine decay to a tenth.
  constexpr double kPeakLr = 3e-3;
  torch::optim::AdamW optimizer(
      lm->parameters(), torch::optim::AdamWOptions(kPeakLr).weight_decay(0.01));
  const int64_t warmup = std::max<int64_t>(1, steps / 15);
  for (int64_t step = 0; step < steps; ++step) {
    const double progress = static_cast<double>(step - warmup) /
        std::max<int64_t>(1, steps - warmup);
    const double lr = step < warmup
        ? kPeakLr * static_cast<double>(step + 1) / warmup
        : kPeakLr * (0.1 + 0.45 * (1 + std::cos(M_PI * progress)));
    for (auto& group : optimizer.param_groups())
      group.options().set_lr(lr);
    lm->train();
    optimizer.zero_grad();
    const auto windows = qat::data::sample_windows(
        kjv.train, 32, kContext, seed * 100003 + step);
    const auto loss = torch::nn::functional::cross_entropy(
        lm(windows.narrow(1, 0, kContext)).reshape({-1, config.vocab_size()}),
        windows.narrow(1, 1, kContext).reshape(-1));
    loss.backward();
    torch::nn::utils::clip_grad_norm_(lm->parameters(), 1.0);
    optimizer.step();
    if ((step + 1) % 50 == 0 || step + 1 == steps) {
      std::printf(
          "step %4lld/%lld  train loss %.3f  lr %.2e  %.1f s\n",
          static_cast<long long>(step + 1),
          static_cast<long long>(steps),
          loss.item<double>(),
          lr,
          seconds());
      std::fflush(stdout);
    }
  }
  const double float_loss = validation_loss(lm, kjv.validation);
  std::printf(
      "\nfloat validation loss %.3f nats/byte (%.0f%% of uniform)\n  sample: %s\n",
      float_loss,
      100.0 * float_loss / uniform,
      sample(lm, "And God said").c_str());

  if (!out_dir.empty()) {
    std::filesystem::create_directories(out_dir);
    lm->config().save_hf_json(out_dir + "/config.json");
    qat::models::save_weights(*lm, out_dir + "/model.safetensors");
    std::printf("saved %s/{config.json,model.safetensors}\n", out_dir.c_str());
  }

  // PTQ of the transformer blocks with GGUF Q4_0 weights; the embedding
  // (and so the tied head) stays in float.
  qat::prepare(
      *lm,
      {{qat::QuantRule::quantize("model.layers.*", qat::preset("gguf_q4_0"))}});
  const double q4_loss = validation_loss(lm, kjv.validation);
  std::printf(
      "GGUF Q4_0 blocks (PTQ) validation loss %.3f nats/byte\n  sample: %s\n",
      q4_loss,
      sample(lm, "And God said").c_str());
  std::printf("\n%.1f s\n", seconds());

  const bool ok = float_loss < 0.5 * uniform;
  if (!ok)
    std::fprintf(
        stderr,
        "FAILED: validation loss not below half the uniform baseline\n");
  return ok ? 0 : 1;
}
