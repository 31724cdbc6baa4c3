// What the stages of a job share (trainers/job/stage.h): the recipe, the
// device and ranks, the task and its data, the metrics log, and what each
// stage leaves for the later ones. Each of those has one writer:
//
//   float_model   the float stage
//   qat_models    the qat stage, by scheme
//   results       each stage that evaluates a model (float, ptq, qat), in
//                 the order they ran; the eval stage reports them
//
// and the helpers every stage uses to copy, calibrate, evaluate and record a
// model live here, once.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qat/prepare.h"
#include "trainers/job/ranks.h"
#include "trainers/recipe.h"
#include "trainers/report.h"
#include "trainers/task.h"
#include "trainers/trainer.h"

namespace qat::train {

struct JobContext {
  JobContext(recipe::Recipe recipe, JobOptions options);

  const recipe::Recipe recipe;
  JobOptions options;
  const std::string run_dir, config_text;
  const uint64_t seed;
  torch::Device device;
  Ranks ranks;
  std::unique_ptr<MetricsLog> metrics; // rank 0's, once the run has a folder

  Model float_model;
  std::map<std::string, Model> qat_models;
  std::vector<ModelResult> results;

  // The task, its data loaded on first use: this rank's shard of it.
  Task& task();
  Model build_model() {
    return task().build_model();
  }
  // quant.<name>, the scheme a stage prepares `model` with: its rules, then
  // its gguf_mix resolved for this model.
  QuantConfig scheme(const std::string& name, torch::nn::Module& model) const;
  // The float model, or a TrainingError saying the float stage comes first.
  torch::nn::Module& need_float() const;
  // A copy of the float model, prepared with `scheme` ("" for float).
  Model copy_of_float(const std::string& scheme_name);
  // Observers see `batches` calibration batches (0: the recipe's
  // trainer.calibration_batches), and the weights are then calibrated by the
  // method the recipe names for `scheme_name` at `method_key`
  // (trainer.ptq.method, trainer.qat.init; see calibration_method). The
  // methods live in trainers/job/calibration.cpp.
  void calibrate(
      torch::nn::Module& model,
      int64_t batches = 0,
      const std::string& method_key = "",
      const std::string& scheme_name = "");
  // The model's metrics on `split`, in eval mode, its observers untouched.
  Metrics evaluate(torch::nn::Module& model, Split split);
  // What `model` (prepared with `scheme_name`, "" for float) serves:
  // quantized weights as converted, every other parameter fp32.
  int64_t weight_bytes(
      torch::nn::Module& model,
      const std::string& scheme_name);
  // Evaluates `model` on both splits, prints and logs its line (and a sample
  // when trainer.sample.prompt is set), and appends its row to results.
  void record(
      const std::string& name,
      const std::string& stage,
      torch::nn::Module& model,
      const std::string& scheme_name);
  void write_metrics(
      const std::string& stage,
      int64_t step,
      const Metrics& numbers,
      const std::map<std::string, std::string>& texts = {});

 private:
  std::unique_ptr<Task> task_;
};

// The calibration method for `scheme_name` at `key`: rtn (the default, round
// to nearest with the observers' scales), gptq, awq or smoothquant
// (qat/calibration/), one for every scheme or a map from scheme name to
// method. Otherwise the recipe's error naming the key and the methods.
std::string calibration_method(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::string& scheme_name);
// Checks the methods at `key` for the schemes the stage lists: a map's keys
// must be among them.
void check_calibration_methods(
    const recipe::Recipe& recipe,
    const std::string& key,
    const std::vector<std::string>& schemes);

// "a, b, c"
std::string join_names(const std::vector<std::string>& names);
// "1.23 MiB" or "12.3 KiB"
std::string human_bytes(double bytes);
// The served size of a converted model (see JobContext::weight_bytes).
int64_t served_bytes(torch::nn::Module& model);

} // namespace qat::train
