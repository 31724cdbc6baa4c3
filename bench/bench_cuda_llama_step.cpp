// A training step of the Llama-style decoder (trainers/models/llama.h) on a
// CUDA device: the float model against the same model prepared for QAT with
// the w8a8_int8 and fp8_e4m3 presets (every Linear of the decoder layers; the
// tied embedding / head stays float), timed with CUDA events in one run and
// printed as a Markdown table with the ratio to the float step.
//
//   bench_cuda_llama_step [--hidden 2048] [--intermediate 5632] [--layers 4]
//                         [--heads 32] [--kv-heads 4] [--vocab 32000]
//                         [--batch 8] [--seq 1024] [--iters 5] [--reps 7]
//
// A step is what the trainer runs (trainers/trainer.cpp): zero_grad, the
// forward under bf16 autocast, cross entropy, backward, AdamW; "fwd + bwd"
// leaves the optimizer out. "host ms" is the wall time the host takes to
// issue one step (median over rounds of `iters` steps, then a synchronize):
// where it reaches the device time, the step is bound by the host. Float32 master weights in every model. The QAT
// models keep their weight observers on (the trainer's default) and run their
// Linears through qat::quant_linear (checked below, before timing).
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_cuda.h"
#include "qat/prepare.h"
#include "trainers/models/llama.h"

namespace {

using qat::models::LlamaConfig;
using qat::models::LlamaForCausalLM;

struct Args {
  int64_t hidden = 2048, intermediate = 5632, layers = 4, heads = 32,
          kv_heads = 4, vocab = 32000, batch = 8, seq = 1024, iters = 5,
          reps = 7;
};

// bf16 autocast on CUDA for one scope, as the trainer's forward runs.
struct Bf16Autocast {
  Bf16Autocast() {
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~Bf16Autocast() {
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
};

struct Model {
  std::string name;
  LlamaForCausalLM lm;
  std::unique_ptr<torch::optim::AdamW> adamw;
};

Model make_model(
    const std::string& name,
    const LlamaConfig& config,
    const char* preset) {
  torch::manual_seed(0);
  Model m{name, LlamaForCausalLM(config), nullptr};
  if (preset) {
    qat::prepare(
        *m.lm,
        {{qat::QuantRule::quantize(
            "model.layers.*", qat::preset(preset), "Linear")}});
  }
  m.lm->to(torch::kCUDA);
  m.lm->train();
  m.adamw = std::make_unique<torch::optim::AdamW>(
      m.lm->parameters(), torch::optim::AdamWOptions(1e-4));
  return m;
}

// The name of the autograd node that the first q_proj's output hangs from
// under bf16 autocast: QuantLinearFunction where quant_linear runs.
std::string q_proj_path(Model& m, const LlamaConfig& config) {
  Bf16Autocast autocast;
  auto& layer = m.lm->model->layers->at<qat::models::LlamaDecoderLayerImpl>(0);
  const torch::Tensor x = torch::randn(
      {4, config.hidden_size()},
      torch::TensorOptions().device(torch::kCUDA).requires_grad(true));
  return layer.self_attn->q_proj(x).grad_fn()->name();
}

} // namespace

int main(int argc, char** argv) {
  Args a;
  qat::bench::parse_flags(
      argc,
      argv,
      {{"--hidden", &a.hidden},
       {"--intermediate", &a.intermediate},
       {"--layers", &a.layers},
       {"--heads", &a.heads},
       {"--kv-heads", &a.kv_heads},
       {"--vocab", &a.vocab},
       {"--batch", &a.batch},
       {"--seq", &a.seq},
       {"--iters", &a.iters},
       {"--reps", &a.reps}});
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "no CUDA device available\n");
    return 1;
  }
  const LlamaConfig config = LlamaConfig()
                                 .vocab_size(a.vocab)
                                 .hidden_size(a.hidden)
                                 .intermediate_size(a.intermediate)
                                 .num_hidden_layers(a.layers)
                                 .num_attention_heads(a.heads)
                                 .num_key_value_heads(a.kv_heads)
                                 .max_position_embeddings(a.seq);
  config.validate();
  std::vector<Model> models;
  models.push_back(make_model("float (bf16 autocast)", config, nullptr));
  models.push_back(make_model("QAT w8a8_int8", config, "w8a8_int8"));
  models.push_back(make_model("QAT fp8_e4m3", config, "fp8_e4m3"));

  torch::manual_seed(1);
  const auto tokens =
      torch::randint(
          a.vocab, {a.batch, a.seq + 1}, torch::TensorOptions(torch::kLong))
          .to(torch::kCUDA);
  const auto inputs = tokens.narrow(1, 0, a.seq);
  const auto targets = tokens.narrow(1, 1, a.seq).reshape({-1});
  const auto forward_backward = [&](Model& m) {
    torch::Tensor loss;
    {
      Bf16Autocast autocast;
      const auto logits = m.lm->forward(inputs);
      loss = torch::cross_entropy_loss(
          logits.reshape({-1, a.vocab}).to(torch::kFloat), targets);
    }
    loss.backward();
  };

  std::printf(
      "Llama-style decoder training step on %s: hidden %lld, intermediate "
      "%lld, %lld layers, %lld heads (%lld kv), vocab %lld, batch %lld x %lld "
      "tokens; %lld steps per sample, median of %lld\n\n",
      at::cuda::getCurrentDeviceProperties()->name,
      static_cast<long long>(a.hidden),
      static_cast<long long>(a.intermediate),
      static_cast<long long>(a.layers),
      static_cast<long long>(a.heads),
      static_cast<long long>(a.kv_heads),
      static_cast<long long>(a.vocab),
      static_cast<long long>(a.batch),
      static_cast<long long>(a.seq),
      static_cast<long long>(a.iters),
      static_cast<long long>(a.reps));
  for (Model& m : models) {
    std::printf(
        "%s: first q_proj's backward node %s\n",
        m.name.c_str(),
        q_proj_path(m, config).c_str());
  }

  std::vector<std::function<void()>> cases;
  for (Model& m : models) {
    cases.push_back([&] {
      m.adamw->zero_grad();
      forward_backward(m);
      m.adamw->step();
    });
  }
  for (Model& m : models) {
    cases.push_back([&] {
      m.adamw->zero_grad();
      forward_backward(m);
    });
  }
  const auto ms = qat::bench::time_interleaved(cases, a.iters, a.reps);
  std::vector<std::vector<double>> host_samples(cases.size());
  for (int64_t round = 0; round < a.reps; ++round) {
    for (size_t c = 0; c < cases.size(); ++c) {
      torch::cuda::synchronize();
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < a.iters; ++i)
        cases[c]();
      const std::chrono::duration<double, std::milli> host =
          std::chrono::steady_clock::now() - start;
      host_samples[c].push_back(host.count() / a.iters);
    }
  }
  torch::cuda::synchronize();
  const auto host_ms = qat::bench::medians(std::move(host_samples));
  const size_t n = models.size();
  std::printf(
      "\n| model | step ms | step vs float | host ms | fwd + bwd ms | "
      "fwd + bwd vs float | host ms |\n|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < n; ++i) {
    std::printf(
        "| %s | %.2f | %.3fx | %.2f | %.2f | %.3fx | %.2f |\n",
        models[i].name.c_str(),
        ms[i],
        ms[i] / ms[0],
        host_ms[i],
        ms[n + i],
        ms[n + i] / ms[n],
        host_ms[n + i]);
  }
  return 0;
}
