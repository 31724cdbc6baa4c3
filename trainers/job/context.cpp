#include "trainers/job/context.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>

#include "qat/convert.h"
#include "qat/fake_quant.h"
#include "trainers/checkpoint.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/quant_config.h"

namespace qat::train {
namespace {

torch::Device device_of(const recipe::Recipe& recipe) {
  const auto name = recipe.get<std::string>("run.device", "auto");
  if (name == "auto")
    return torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
  if (name != "cpu" && name != "cuda")
    recipe.fail_at(
        "run.device", "expected auto, cpu or cuda, got '" + name + "'");
  if (name == "cuda" && !torch::cuda::is_available())
    recipe.fail_at("run.device", "cuda was asked for but no GPU is available");
  return torch::Device(name);
}

// Evaluation never moves an observer.
class ObserversPaused {
 public:
  explicit ObserversPaused(torch::nn::Module& model) {
    for (const auto& m : model.modules(/*include_self=*/false)) {
      if (auto* q = m->as<FakeQuantizerImpl>()) {
        quantizers_.push_back(q);
        was_on_.push_back(q->observer_enabled());
        q->enable_observer(false);
      }
    }
  }
  ~ObserversPaused() {
    for (size_t i = 0; i < quantizers_.size(); ++i)
      quantizers_[i]->enable_observer(was_on_[i]);
  }

 private:
  std::vector<FakeQuantizerImpl*> quantizers_;
  std::vector<bool> was_on_;
};

} // namespace

JobContext::JobContext(recipe::Recipe r, JobOptions o)
    : recipe(std::move(r)),
      options(std::move(o)),
      run_dir(recipe.get<std::string>("run.dir")),
      config_text(recipe.dump()),
      seed(static_cast<uint64_t>(recipe.get<int64_t>("run.seed", 0))),
      device(device_of(recipe)),
      ranks(recipe, device) {
  if (!options.warn) {
    options.warn = [](const std::string& m) {
      std::fprintf(stderr, "warning: %s\n", m.c_str());
    };
  }
  if (const auto threads = recipe.get<int64_t>("run.threads", 0); threads > 0)
    torch::set_num_threads(static_cast<int>(threads));
}

Task& JobContext::task() {
  if (!task_) {
    Distributed* d = &ranks.group();
    Shard shard{d->rank(), d->world_size(), [this, d](std::vector<double>& v) {
                  d->all_reduce(
                      v, ReduceOp::sum, ranks.activity() + ": evaluation");
                }};
    task_ = make_task(recipe, device, seed, std::move(shard));
  }
  return *task_;
}

QuantConfig JobContext::scheme(
    const std::string& name,
    torch::nn::Module& model) const {
  const std::string key = "quant." + name;
  QuantConfig config = recipe::quant_config(recipe, key);
  if (const auto mix = recipe::gguf_mix_preset(recipe, key); !mix.empty()) {
    auto* lm = dynamic_cast<models::LlamaForCausalLMImpl*>(&model);
    if (!lm)
      recipe.fail_at(
          key + ".gguf_mix",
          "llama.cpp's type mixes are for the Llama-style decoder");
    const Estimator estimator = recipe::gguf_mix_estimator(recipe, key);
    for (auto& rule : models::gguf_mix_scheme(*lm, mix).rules) {
      auto& weight = rule.specs->weight;
      if (weight && weight->spec().is_gguf_kquant())
        weight->estimator(estimator);
      config.rules.push_back(std::move(rule));
    }
  }
  return config;
}

torch::nn::Module& JobContext::need_float() const {
  if (!float_model)
    throw TrainingError(
        "the float model is needed first: put 'float' before the other stages");
  return *float_model;
}

Model JobContext::copy_of_float(const std::string& scheme_name) {
  auto model = build_model();
  load_module_state(*model, module_state(need_float()), "the float model");
  if (!scheme_name.empty())
    prepare(*model, scheme(scheme_name, *model));
  ranks.make_data_parallel(*model);
  return model;
}

Metrics JobContext::evaluate(torch::nn::Module& model, Split split) {
  torch::NoGradGuard no_grad;
  ObserversPaused paused(model);
  const bool was_training = model.is_training();
  model.eval();
  auto metrics = task().evaluate(model, split);
  model.train(was_training);
  return metrics;
}

int64_t JobContext::weight_bytes(
    torch::nn::Module& model,
    const std::string& scheme_name) {
  auto served = copy_of_float(scheme_name);
  if (!scheme_name.empty()) {
    load_module_state(*served, module_state(model), "the quantized model");
    convert(*served);
  }
  return served_bytes(*served);
}

void JobContext::record(
    const std::string& name,
    const std::string& stage,
    torch::nn::Module& model,
    const std::string& scheme_name) {
  ModelResult r;
  r.name = name;
  r.stage = stage;
  r.validation = evaluate(model, Split::validation);
  r.test = evaluate(model, Split::test);
  r.weight_bytes = weight_bytes(model, scheme_name);
  write_metrics(stage, -1, r.validation, {{"split", "validation"}});
  write_metrics(stage, -1, r.test, {{"split", "test"}});
  const char* metric = task().metric();
  std::printf(
      "%-12s validation %s %.4g  test %s %.4g  (loss %.4f)\n",
      name.c_str(),
      metric,
      r.validation.at(metric),
      metric,
      r.test.at(metric),
      r.test.at("loss"));
  if (const auto prompt = recipe.get<std::string>("trainer.sample.prompt", "");
      !prompt.empty() && ranks.is_main()) {
    torch::NoGradGuard no_grad;
    ObserversPaused paused(model);
    model.eval();
    const auto tokens = recipe.get<int64_t>("trainer.sample.tokens", 32);
    std::printf(
        "  %s: %s|%s\n",
        name.c_str(),
        prompt.c_str(),
        task().sample(model, prompt, tokens).c_str());
  }
  std::fflush(stdout);
  results.push_back(std::move(r));
}

void JobContext::write_metrics(
    const std::string& stage,
    int64_t step,
    const Metrics& numbers,
    const std::map<std::string, std::string>& texts) {
  if (metrics) // rank 0's alone
    metrics->write(stage, step, numbers, texts);
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names)
    out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string human_bytes(double bytes) {
  char text[32];
  if (bytes >= 1 << 20)
    std::snprintf(text, sizeof text, "%.2f MiB", bytes / (1 << 20));
  else
    std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024);
  return text;
}

int64_t served_bytes(torch::nn::Module& model) {
  int64_t bytes = 0;
  std::set<std::string> quantized;
  for (const auto& [name, w] : quantized_weights(model)) {
    bytes += w->storage_bytes();
    quantized.insert(name + ".weight");
  }
  for (const auto& p : model.named_parameters()) {
    if (p.key().find("_quantizer.") == std::string::npos &&
        !quantized.count(p.key()))
      bytes += p.value().numel() * 4;
  }
  return bytes;
}

} // namespace qat::train
