// JobContext::calibrate and the calibration methods a recipe names
// (trainer.ptq.method, trainer.qat.init): each method is one function here
// over its algorithm in qat/calibration/, with its progress lines and its
// options from trainer.<method>.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "qat/calibration/awq.h"
#include "qat/calibration/gptq.h"
#include "qat/calibration/smoothquant.h"
#include "trainers/job/context.h"

namespace qat::train {
namespace {

const std::vector<std::string> kMethods = {"rtn", "gptq", "awq", "smoothquant"};

void check_method(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::string& method) {
  if (std::find(kMethods.begin(), kMethods.end(), method) == kMethods.end())
    recipe.fail_at(
        key, "expected " + join_names(kMethods) + ", got '" + method + "'");
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

double median(std::vector<double> values) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

void calibrate_by_gptq(
    JobContext& job,
    torch::nn::Module& model,
    const std::function<void()>& run_batches) {
  const auto& recipe = job.recipe;
  const auto gptq_options =
      GptqOptions()
          .damp(recipe.get<double>("trainer.gptq.damp", 0.01))
          .block_size(recipe.get<int64_t>("trainer.gptq.block_size", 128))
          .act_order(recipe.get<bool>("trainer.gptq.act_order", false));
  GptqHooks hooks;
  if (job.ranks.size() > 1) {
    hooks.sum_over_ranks = [&](torch::Tensor& t) {
      job.ranks.group().all_reduce(t, ReduceOp::sum, "gptq's Hessians");
    };
  }
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0, raised = 0;
  std::vector<double> ratios;
  hooks.progress = [&](const GptqLayerReport& r) {
    ++done;
    ratios.push_back(r.error_vs_rtn);
    raised += r.damp > gptq_options.damp() ? 1 : 0;
    if (r.tokens < r.inputs) {
      job.options.warn(
          "gptq: " + r.name + " saw " + std::to_string(r.tokens) +
          " calibration tokens for " + std::to_string(r.inputs) +
          " inputs: its Hessian is rank-deficient and the damping decides "
          "the rest; raise trainer.calibration_batches");
    }
    if (job.ranks.is_main() && (done % 20 == 0)) {
      std::printf(
          "gptq: %lld layers done (%s: output error %.2f of rtn's)\n",
          static_cast<long long>(done),
          r.name.c_str(),
          r.error_vs_rtn);
      std::fflush(stdout);
    }
  };
  calibrate_gptq(model, run_batches, gptq_options, hooks);
  if (job.ranks.is_main() && !ratios.empty()) {
    std::printf(
        "gptq: %lld Linear layers in %.1f s; output error on the calibration "
        "inputs against round to nearest's: median %.3f, max %.3f; damping "
        "raised in %lld\n",
        static_cast<long long>(done),
        seconds_since(start),
        median(ratios),
        *std::max_element(ratios.begin(), ratios.end()),
        static_cast<long long>(raised));
  }
}

// The model's scale-folding points, or the recipe's error at `key`.
std::vector<ScaleFoldPoint> fold_points(
    JobContext& job,
    torch::nn::Module& model,
    const std::string& key,
    const std::string& method) {
  auto* foldable = dynamic_cast<ScaleFoldable*>(&model);
  if (!foldable) {
    job.recipe.fail_at(
        key,
        method +
            " folds scales into the op before each Linear, and this "
            "model (" +
            model.name() +
            ") names no such points; the Llama-style decoder does");
  }
  return foldable->scale_fold_points();
}

FoldInputHooks rank_hooks(JobContext& job, const std::string& what) {
  FoldInputHooks hooks;
  if (job.ranks.size() > 1) {
    hooks.sum_over_ranks = [&job, what](torch::Tensor& t) {
      job.ranks.group().all_reduce(t, ReduceOp::sum, what);
    };
    hooks.max_over_ranks = [&job, what](torch::Tensor& t) {
      job.ranks.group().all_reduce(t, ReduceOp::max, what);
    };
  }
  return hooks;
}

void calibrate_by_awq(
    JobContext& job,
    torch::nn::Module& model,
    const std::function<void()>& run_batches,
    const std::string& key) {
  const auto& recipe = job.recipe;
  const auto points = fold_points(job, model, key, "awq");
  const auto awq_options =
      AwqOptions()
          .grid(recipe.get<int64_t>("trainer.awq.grid", 20))
          .duo_scaling(recipe.get<bool>("trainer.awq.duo_scaling", true))
          .clip(recipe.get<bool>("trainer.awq.clip", true))
          .max_shrink(recipe.get<double>("trainer.awq.max_shrink", 0.5))
          .clip_grid(recipe.get<int64_t>("trainer.awq.clip_grid", 20));
  AwqHooks hooks;
  hooks.ranks = rank_hooks(job, "awq's activation statistics");
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> ratios;
  int64_t kept = 0;
  hooks.progress = [&](const AwqPointReport& r) {
    ratios.push_back(r.error_vs_rtn);
    kept += r.alpha < 0 ? 1 : 0;
    if (job.ranks.is_main() && ratios.size() % 20 == 0) {
      std::printf(
          "awq: %zu of %zu points done (%s: alpha %.2f, output error %.2f of "
          "rtn's)\n",
          ratios.size(),
          points.size(),
          r.name.c_str(),
          r.alpha,
          r.error_vs_rtn);
      std::fflush(stdout);
    }
  };
  calibrate_awq(model, points, run_batches, awq_options, hooks);
  if (job.ranks.is_main()) {
    std::printf(
        "awq: %zu scale-folding points in %.1f s; output error of their "
        "readers on the calibration inputs against round to nearest's: "
        "median %.3f, max %.3f; unscaled (s = 1 best) at %lld\n",
        ratios.size(),
        seconds_since(start),
        median(ratios),
        ratios.empty() ? 0.0 : *std::max_element(ratios.begin(), ratios.end()),
        static_cast<long long>(kept));
  }
}

void calibrate_by_smoothquant(
    JobContext& job,
    torch::nn::Module& model,
    const std::function<void()>& run_batches,
    const std::string& key) {
  const auto points = fold_points(job, model, key, "smoothquant");
  const auto sq_options = SmoothQuantOptions().alpha(
      job.recipe.get<double>("trainer.smoothquant.alpha", 0.5));
  SmoothQuantHooks hooks;
  hooks.ranks = rank_hooks(job, "smoothquant's activation maxima");
  std::vector<double> before, after;
  hooks.progress = [&](const SmoothQuantPointReport& r) {
    before.push_back(r.outlier_ratio_before);
    after.push_back(r.outlier_ratio_after);
  };
  const auto start = std::chrono::steady_clock::now();
  calibrate_smoothquant(model, points, run_batches, sq_options, hooks);
  if (job.ranks.is_main()) {
    std::printf(
        "smoothquant: %zu points smoothed (alpha %.2f) in %.1f s; largest "
        "input channel over the median one: median %.1f -> %.1f\n",
        before.size(),
        sq_options.alpha(),
        seconds_since(start),
        median(before),
        median(after));
  }
}

// Where the method for `scheme_name` is written: `key` itself when it names
// one method for every scheme, key.<scheme> when it is a map.
std::string scheme_method_key(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::string& scheme_name) {
  return !recipe.has(key) || recipe.is_scalar(key) ? key
                                                   : key + "." + scheme_name;
}

} // namespace

std::string calibration_method(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::string& scheme_name) {
  if (!recipe.has(key))
    return "rtn";
  const std::string at = scheme_method_key(recipe, key, scheme_name);
  const auto method = recipe.get<std::string>(at, "rtn");
  check_method(recipe, at, method);
  return method;
}

void check_calibration_methods(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::vector<std::string>& schemes) {
  if (!recipe.has(key))
    return;
  if (recipe.is_scalar(key)) {
    check_method(recipe, key, recipe.get<std::string>(key));
    return;
  }
  for (const auto& name : recipe.keys(key)) {
    if (std::find(schemes.begin(), schemes.end(), name) == schemes.end())
      recipe.fail_at(
          key + "." + name,
          "names no scheme of this stage (" + join_names(schemes) + ")");
    check_method(
        recipe, key + "." + name, recipe.get<std::string>(key + "." + name));
  }
}

void JobContext::calibrate(
    torch::nn::Module& model,
    int64_t batches,
    const std::string& method_key,
    const std::string& scheme_name) {
  ranks.set_activity("calibration");
  if (batches == 0)
    batches = recipe.get<int64_t>("trainer.calibration_batches", 16);
  model.eval();
  const auto run_batches = [&] {
    for (int64_t b = 0; b < batches; ++b)
      task().forward(model, task().calibration_batch(b).inputs);
  };
  const std::string method = method_key.empty()
      ? "rtn"
      : calibration_method(recipe, method_key, scheme_name);
  const std::string key = method_key.empty()
      ? method_key
      : scheme_method_key(recipe, method_key, scheme_name);
  if (method == "gptq")
    calibrate_by_gptq(*this, model, run_batches);
  else if (method == "awq")
    calibrate_by_awq(*this, model, run_batches, key);
  else if (method == "smoothquant")
    calibrate_by_smoothquant(*this, model, run_batches, key);
  else
    qat::calibrate(model, run_batches);
}

} // namespace qat::train
