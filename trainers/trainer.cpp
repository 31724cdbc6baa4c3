#include "trainers/trainer.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "qat/convert.h"
#include "trainers/checkpoint.h"
#include "trainers/error_text.h"
#include "trainers/job/context.h"
#include "trainers/job/stage.h"
#include "trainers/job/training.h"

namespace qat::train {
namespace fs = std::filesystem;

namespace {

// The stages of a run, each checked against the recipe before the first one
// starts: a bad value for the last stage costs no training. `schemes` gets
// the schemes the stages will prepare.
std::vector<std::unique_ptr<Stage>> plan(
    const recipe::Recipe& recipe,
    const std::vector<std::string>& names,
    std::set<std::string>* schemes = nullptr) {
  std::vector<std::unique_ptr<Stage>> stages;
  for (const auto& name : names)
    stages.push_back(make_stage(recipe, name));
  for (const auto& stage : stages) {
    for (const auto& scheme : stage->check(recipe, names)) {
      if (schemes)
        schemes->insert(scheme);
    }
  }
  return stages;
}

} // namespace

Job::Job(recipe::Recipe recipe, JobOptions options)
    : job_(
          std::make_unique<JobContext>(std::move(recipe), std::move(options))) {
}

Job::~Job() = default;

const std::string& Job::run_dir() const {
  return job_->run_dir;
}

std::vector<ModelResult> Job::run(const std::vector<std::string>& names_in) {
  auto& job = *job_;
  const auto names = names_in.empty()
      ? job.recipe.get<std::vector<std::string>>("trainer.stages")
      : names_in;
  const auto stages = plan(job.recipe, names);
  job.ranks.check_same_recipe(job.config_text);
  const fs::path dir(job.run_dir);
  if (!job.options.resume && fs::exists(dir / "checkpoints")) {
    throw TrainingError(
        "run directory " + job.run_dir +
        " already holds checkpoints: pass --resume to continue that run, or set run.dir to "
        "another directory");
  }
  if (job.ranks.is_main()) {
    fs::create_directories(dir);
    {
      std::ofstream config(dir / "config.yaml");
      config << job.config_text << "\n";
    }
    job.metrics =
        std::make_unique<MetricsLog>((dir / "metrics.jsonl").string());
  }
  auto& group = job.ranks.group();
  if (group.world_size() > 1)
    std::printf(
        "run: %s (%lld ranks over %s, device %s)\n",
        job.run_dir.c_str(),
        static_cast<long long>(group.world_size()),
        group.backend().c_str(),
        job.device.str().c_str());
  else
    std::printf(
        "run: %s (device %s)\n", job.run_dir.c_str(), job.device.str().c_str());
  try {
    for (const auto& stage : stages)
      stage->run(job);
  } catch (const Halted& h) {
    std::printf(
        "halted after step %lld as asked; continue with --resume\n",
        static_cast<long long>(h.step));
  } catch (const DistributedError&) {
    throw; // it names the ranks already
  } catch (const std::exception& e) {
    group.announce_failure(error_text(e)); // so the others can say why
    throw;
  }
  return job.results;
}

ModelResult Job::evaluate_checkpoint(
    const std::string& checkpoint,
    const std::string& scheme) {
  auto& job = *job_;
  auto model = job.build_model();
  if (!scheme.empty())
    prepare(*model, job.scheme(scheme, *model));
  load_module_state(*model, read_checkpoint(checkpoint).model, checkpoint);
  ModelResult r;
  r.name = scheme.empty() ? "float" : scheme;
  r.stage = "eval";
  r.validation = job.evaluate(*model, Split::validation);
  r.test = job.evaluate(*model, Split::test);
  return r;
}

ExportSizes Job::export_checkpoint(
    const std::string& checkpoint,
    const std::string& scheme,
    const std::string& path,
    const std::string& format) {
  auto& job = *job_;
  job.float_model = job.build_model();
  auto model = job.build_model();
  prepare(*model, job.scheme(scheme, *model));
  load_module_state(*model, read_checkpoint(checkpoint).model, checkpoint);
  convert(*model);
  return write_export(
      job,
      *model,
      format,
      path,
      job.recipe.get<std::string>("run.name") + " " + scheme);
}

std::string Job::check() {
  auto& job = *job_;
  const auto names = job.recipe.get<std::vector<std::string>>("trainer.stages");
  std::set<std::string> schemes;
  plan(job.recipe, names, &schemes);
  torch::manual_seed(job.seed);
  job.float_model = job.build_model();
  std::ostringstream out;
  out << "recipe: stages " << join_names(names) << "; model "
      << job.recipe.get<std::string>("model.type") << "\n";
  for (const auto& name : schemes) {
    auto model = job.copy_of_float(name);
    job.calibrate(*model, 1); // the specs meet the layers' shapes
    out << "scheme " << name << ": prepared and calibrated on one batch\n";
  }
  return out.str();
}

std::string Job::info(const std::string& scheme) {
  auto& job = *job_;
  torch::manual_seed(job.seed);
  job.float_model = job.build_model();
  std::ostringstream out;
  int64_t parameters = 0;
  for (const auto& p : job.float_model->parameters())
    parameters += p.numel();
  out << "model: " << job.recipe.get<std::string>("model.type") << ", "
      << parameters << " parameters, "
      << human_bytes(
             static_cast<double>(job.weight_bytes(*job.float_model, "")))
      << " as fp32\n";
  if (!scheme.empty()) {
    auto model = job.copy_of_float("");
    const auto report = prepare(*model, job.scheme(scheme, *model));
    job.calibrate(*model); // sizes the weight quantizers
    out << "scheme " << scheme << ":\n"
        << report.table() << "served weights: "
        << human_bytes(static_cast<double>(job.weight_bytes(*model, scheme)))
        << "\n";
  }
  return out.str();
}

} // namespace qat::train
