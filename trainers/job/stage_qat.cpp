#include "trainers/job/stage.h"
#include "trainers/job/training.h"

namespace qat::train {
namespace {

// Quantization-aware training: for each scheme, a prepared copy of the float
// model, calibrated (trainer.qat.init: rtn, gptq, awq or smoothquant, for all
// schemes or per scheme), then fine-tuned with fake-quant (and distillation
// from the float model when trainer.qat.distill asks for it).
class QatStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>&) const override {
    LoopConfig::read(recipe, "trainer.qat");
    auto schemes = checked_schemes(recipe, "trainer.qat.schemes");
    check_calibration_methods(recipe, "trainer.qat.init", schemes);
    return schemes;
  }

  void run(JobContext& job) const override {
    auto& float_model = job.need_float();
    const auto config = LoopConfig::read(job.recipe, "trainer.qat");
    // A pretrained model adapts to the data as it is fine-tuned: the float
    // model fine-tuned with the same steps on the same data is the baseline
    // that says what quantization-aware training itself recovers. It learns
    // from the data (cross-entropy), whatever QAT distils.
    if (job.recipe.get<bool>(
            "trainer.qat.float_baseline", job.task().pretrained())) {
      auto tuned = job.copy_of_float("");
      LoopConfig on_data = config;
      on_data.ce = 1;
      on_data.kl = on_data.mse = 0;
      train(job, "float_tuned", *tuned, on_data, nullptr, false);
      job.record("float fine-tuned", "float_tuned", *tuned, "");
    }
    for (const auto& name :
         job.recipe.get<std::vector<std::string>>("trainer.qat.schemes")) {
      auto model = job.copy_of_float(name);
      job.calibrate(*model, 0, "trainer.qat.init", name);
      train(
          job,
          "qat." + name,
          *model,
          config,
          config.distills() ? &float_model : nullptr,
          true);
      job.record("QAT " + name, "qat." + name, *model, name);
      job.qat_models[name] = model;
    }
  }
};

} // namespace

std::unique_ptr<Stage> make_qat_stage() {
  return std::make_unique<QatStage>();
}

} // namespace qat::train
