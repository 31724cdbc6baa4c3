// The stages of a job (trainer.stages), each in its own file with one job:
//
//   float    stage_float.cpp    trains (or loads, or takes as built) the float
//                               model and records it
//   sensitivity stage_sensitivity.cpp  each layer's loss increase alone at
//                               each trainer.sensitivity.candidates, and a
//                               mixed-precision scheme under a bit budget
//                               (`qat sensitivity`; not in a default run)
//   ptq      stage_ptq.cpp      for each trainer.ptq.schemes: a prepared copy
//                               of the float model, calibrated, recorded
//   qat      stage_qat.cpp      the float model fine-tuned as the baseline
//                               (pretrained models), then each
//                               trainer.qat.schemes trained with fake-quant
//   eval     stage_eval.cpp     the table, summary files and plots
//   export   stage_export.cpp   each export.schemes converted and written as
//                               export.format
//
// Adding a stage is one more file and one more row in stages.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trainers/job/context.h"

namespace qat::train {

class Stage {
 public:
  virtual ~Stage() = default;
  // Everything this stage reads from the recipe alone, checked before the
  // first stage of `stages` (the whole run) starts, so that a bad value for
  // the last stage costs no training. Returns the schemes it will prepare.
  virtual std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>& stages) const {
    return {};
  }
  virtual void run(JobContext& job) const = 0;
};

// The stages' names, in the order a full run takes them.
std::vector<std::string> stage_names();
// The stage called `name`; fails naming trainer.stages for an unknown one.
std::unique_ptr<Stage> make_stage(
    const recipe::Recipe& recipe,
    const std::string& name);

std::unique_ptr<Stage> make_float_stage();
std::unique_ptr<Stage> make_sensitivity_stage();
std::unique_ptr<Stage> make_ptq_stage();
std::unique_ptr<Stage> make_qat_stage();
std::unique_ptr<Stage> make_eval_stage();
std::unique_ptr<Stage> make_export_stage();

// The converted model `served` written to `path` as `format` (one of
// export_formats(); see Job::export_checkpoint), with the sizes to print
// beside it: the export stage's writer, also `qat export`'s. A model the
// format cannot hold throws std::invalid_argument.
ExportSizes write_export(
    JobContext& job,
    torch::nn::Module& served,
    const std::string& format,
    const std::string& path,
    const std::string& title);

// The scheme names listed at `key` (trainer.ptq.schemes, ...), each a
// quant.<name> that parses; errors name the key.
std::vector<std::string> checked_schemes(
    const recipe::Recipe& recipe,
    const std::string& key);

// Whether `stages` includes `stage`.
bool runs(const std::vector<std::string>& stages, const std::string& stage);

} // namespace qat::train
