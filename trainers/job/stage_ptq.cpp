#include "trainers/job/stage.h"
#include "trainers/quant_config.h"

namespace qat::train {
namespace {

// Post-training quantization: each scheme prepared on a copy of the float
// model, its observers calibrated, no training.
class PtqStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>&) const override {
    return schemes(recipe);
  }

  void run(JobContext& job) const override {
    job.need_float();
    for (const auto& name : schemes(job.recipe)) {
      auto model = job.copy_of_float(name);
      job.calibrate(*model);
      job.record("PTQ " + name, "ptq." + name, *model, name);
    }
  }

 private:
  // trainer.ptq.schemes, each of which names a quant.<scheme> that parses.
  static std::vector<std::string> schemes(const recipe::Recipe& recipe) {
    const auto names =
        recipe.get<std::vector<std::string>>("trainer.ptq.schemes");
    for (const auto& name : names)
      recipe::quant_config(recipe, "quant." + name);
    return names;
  }
};

} // namespace

std::unique_ptr<Stage> make_ptq_stage() {
  return std::make_unique<PtqStage>();
}

} // namespace qat::train
