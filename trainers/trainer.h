// The job a recipe describes, run stage by stage in its run directory:
//
//   float    train the float model (or load it: trainer.float.load)
//   ptq      for each scheme in trainer.ptq.schemes: prepare a copy of the
//            float model, calibrate its observers, evaluate
//   qat      for each scheme in trainer.qat.schemes: prepare a copy,
//            calibrate, fine-tune with fake-quant (QAT schedule, optional
//            distillation from the float model), evaluate
//   eval     the float / PTQ / QAT models side by side on the test set: a
//            table on stdout, summary.md / summary.json, PNG plots
//   export   convert each exported QAT model to real low-precision weights
//
// Training stages checkpoint to <run.dir>/checkpoints/<stage>/ every
// trainer.checkpoint.every steps and when they finish; with `resume` a run
// continues from the newest checkpoint that verifies and ends with the same
// weights as a run that was never interrupted (on CPU). A NaN or inf loss
// stops the run with TrainingError, leaving the last good checkpoint intact.
//
// Under torchrun or srun the job is data-parallel (trainers/distributed.h,
// docs/DISTRIBUTED.md): each rank trains on its slice of every global batch,
// gradients, observer ranges and (with run.distributed.sync_bn) BN statistics
// are reduced across the ranks, and rank 0 alone writes files; N ranks end
// with the weights one process would, and resume with any world size.
//
// Example:
//   auto recipe = qat::recipe::Recipe::load("recipes/quickstart.yaml", {});
//   qat::train::Job job(recipe, {});
//   auto results = job.run();
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainers/recipe.h"

namespace qat::train {

struct JobContext; // trainers/job/context.h

class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct JobOptions {
  bool resume = false;
  // Stop (as if interrupted) right after checkpointing step `halt_step` of
  // stage `halt_stage` ("float", "qat.w4a4"): a time limit on a cluster, or
  // a test of resuming. Empty: never.
  std::string halt_stage;
  int64_t halt_step = 0;
  // Progress and results go to stdout/stderr; warnings through this.
  std::function<void(const std::string&)> warn;
};

// One model's row in the summary.
struct ModelResult {
  std::string name;  // "float", "PTQ int8", "QAT w4a4"
  std::string stage; // "float", "ptq.int8", "qat.w4a4"
  std::map<std::string, double> validation, test; // accuracy, loss, ...
  int64_t weight_bytes = 0;                       // served size of the weights
};

// What an export wrote, beside the float model's weights and the theoretical
// size of the quantized ones (each weight at its bits, plus scales and zero
// points; every other parameter fp32).
struct ExportSizes {
  int64_t file_bytes = 0, float_bytes = 0, theoretical_bytes = 0;
};
// "PATH (1.2 MiB; float 4.1 MiB; theoretical 1.1 MiB: ...)"
std::string describe(const ExportSizes& sizes, const std::string& path);

// The formats `qat export --format` and the recipes' export.format accept,
// and the file name extension of each.
std::vector<std::string> export_formats();
std::string export_extension(const std::string& format);

class Job {
 public:
  Job(recipe::Recipe recipe, JobOptions options);
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  // Runs `stages` (default: the recipe's trainer.stages) and returns every
  // model evaluated, float first.
  std::vector<ModelResult> run(const std::vector<std::string>& stages = {});

  // `qat eval`: the test metrics of the model in `checkpoint` (float, or
  // quantized with `scheme`).
  ModelResult evaluate_checkpoint(
      const std::string& checkpoint,
      const std::string& scheme);
  // `qat export`: converts the QAT model in `checkpoint` and writes it to
  // `path` as `format`: "native" (qat::save_converted), "gguf" (llama.cpp's
  // format; the Llama-style decoder), "onnx" (a QuantizeLinear /
  // DequantizeLinear graph; the image classifiers) or "compressed-tensors"
  // (a Hugging Face checkpoint folder for vLLM / transformers at `path`; the
  // Llama-style decoder). Unknown formats and
  // models a format cannot hold throw std::invalid_argument.
  ExportSizes export_checkpoint(
      const std::string& checkpoint,
      const std::string& scheme,
      const std::string& path,
      const std::string& format = "native");
  // `qat train --check`: everything the run would check before its first
  // step (the recipe's values, the data, the model, each scheme prepared and
  // calibrated on one batch), without training or writing anything; throws
  // what the run would throw. Returns a summary of what was checked.
  std::string check();
  // `qat info`: the model, each layer's effective quantization, parameter
  // count and sizes.
  std::string info(const std::string& scheme);

  const std::string& run_dir() const;

 private:
  std::unique_ptr<JobContext> job_;
};

} // namespace qat::train
