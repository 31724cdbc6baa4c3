#include <algorithm>
#include <utility>

#include "trainers/job/stage.h"
#include "trainers/quant_config.h"

namespace qat::train {
namespace {

using Maker = std::unique_ptr<Stage> (*)();

const std::vector<std::pair<std::string, Maker>>& stage_table() {
  static const std::vector<std::pair<std::string, Maker>> table = {
      {"float", make_float_stage},
      {"sensitivity", make_sensitivity_stage},
      {"ptq", make_ptq_stage},
      {"qat", make_qat_stage},
      {"eval", make_eval_stage},
      {"export", make_export_stage},
  };
  return table;
}

} // namespace

std::vector<std::string> stage_names() {
  std::vector<std::string> names;
  for (const auto& [name, make] : stage_table())
    names.push_back(name);
  return names;
}

std::unique_ptr<Stage> make_stage(
    const recipe::Recipe& recipe,
    const std::string& name) {
  for (const auto& [known, make] : stage_table()) {
    if (known == name)
      return make();
  }
  const auto names = stage_names();
  const auto best = recipe::closest(name, names);
  recipe.fail_at(
      "trainer.stages",
      "unknown stage '" + name + "'" +
          (best.empty() ? "" : " (did you mean '" + best + "'?)") +
          "; stages: " + join_names(names));
}

std::vector<std::string> checked_schemes(
    const recipe::Recipe& recipe,
    const std::string& key) {
  const auto names = recipe.get<std::vector<std::string>>(key);
  for (const auto& name : names)
    recipe::quant_config(recipe, "quant." + name);
  return names;
}

bool runs(const std::vector<std::string>& stages, const std::string& stage) {
  return std::find(stages.begin(), stages.end(), stage) != stages.end();
}

} // namespace qat::train
