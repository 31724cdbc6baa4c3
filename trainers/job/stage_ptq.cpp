#include "trainers/job/stage.h"

namespace qat::train {
namespace {

// Post-training quantization: each scheme prepared on a copy of the float
// model, its observers calibrated (and its weights by trainer.ptq.method:
// rtn, gptq, awq or smoothquant, for all schemes or per scheme), no training.
class PtqStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>&) const override {
    auto schemes = checked_schemes(recipe, "trainer.ptq.schemes");
    check_calibration_methods(recipe, "trainer.ptq.method", schemes);
    return schemes;
  }

  void run(JobContext& job) const override {
    job.need_float();
    for (const auto& name :
         job.recipe.get<std::vector<std::string>>("trainer.ptq.schemes")) {
      auto model = job.copy_of_float(name);
      job.calibrate(*model, 0, "trainer.ptq.method", name);
      const auto method =
          calibration_method(job.recipe, "trainer.ptq.method", name);
      job.record(
          "PTQ " + name + (method == "rtn" ? "" : " (" + method + ")"),
          "ptq." + name,
          *model,
          name);
    }
  }
};

} // namespace

std::unique_ptr<Stage> make_ptq_stage() {
  return std::make_unique<PtqStage>();
}

} // namespace qat::train
