#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

#include "trainers/checkpoint.h"
#include "trainers/job/stage.h"
#include "trainers/job/training.h"

namespace qat::train {
namespace {

// The float model: loaded from trainer.float.load, taken as built (a
// pretrained model with trainer.float.steps 0), or trained.
class FloatStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>&) const override {
    const auto load = recipe.get<std::string>("trainer.float.load", "");
    if (!load.empty() && !std::filesystem::is_regular_file(load))
      recipe.fail_at("trainer.float.load", "no such file: " + load);
    if (load.empty() && recipe.get<int64_t>("trainer.float.steps") > 0)
      LoopConfig::read(recipe, "trainer.float");
    return {};
  }

  void run(JobContext& job) const override {
    torch::manual_seed(job.seed);
    job.float_model = job.build_model();
    auto& model = *job.float_model;
    job.ranks.make_data_parallel(model);
    const auto load = job.recipe.get<std::string>("trainer.float.load", "");
    if (!load.empty()) {
      load_module_state(model, read_checkpoint(load).model, load);
      std::printf("float: loaded %s\n", load.c_str());
    } else if (job.recipe.get<int64_t>("trainer.float.steps") == 0) {
      std::printf("float: the model as built (pretrained), no training\n");
    } else {
      train(
          job,
          "float",
          model,
          LoopConfig::read(job.recipe, "trainer.float"),
          nullptr,
          false);
    }
    job.record("float", "float", model, "");
  }
};

} // namespace

std::unique_ptr<Stage> make_float_stage() {
  return std::make_unique<FloatStage>();
}

} // namespace qat::train
