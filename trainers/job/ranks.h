// The ranks of a job as its stages see them: the process group torchrun or
// SLURM started (one process when neither did), what the job is doing for the
// errors of collectives, and the checks that keep N ranks one job: the same
// recipe everywhere, equal models after training, observers that agree on
// each batch's range.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainers/distributed.h"
#include "trainers/recipe.h"

namespace qat::train {

class Ranks {
 public:
  // Joins the launcher's process group with run.distributed.*; with CUDA and
  // several ranks, `device` becomes this rank's GPU (LOCAL_RANK).
  Ranks(const recipe::Recipe& recipe, torch::Device& device);

  Distributed& group() {
    return *dist_;
  }
  bool is_main() const {
    return dist_->is_main();
  }
  int64_t size() const {
    return dist_->world_size();
  }
  bool sync_bn() const {
    return sync_bn_;
  }

  // What the job is doing ("qat.w4a4: step 78", "calibration"), for the
  // errors of collectives that know nothing of steps.
  void set_activity(std::string activity) {
    activity_ = std::move(activity);
  }
  const std::string& activity() const {
    return activity_;
  }

  // Every activation quantizer of `model` agrees with the other ranks on
  // each batch's range, and with run.distributed.sync_bn, Conv+BN normalises
  // with the global batch. A no-op for one process.
  void make_data_parallel(torch::nn::Module& model);

  // Every rank's `value`, in rank order (exact for integers below 2^53).
  std::vector<double> values(double value, const std::string& what);
  static bool all_equal(const std::vector<double>& values);

  // Throws DistributedError unless every rank composed the same recipe.
  void check_same_recipe(const std::string& config_text);
  // Hands `log` the CRC-32 of each rank's parameters and buffers,
  // "1a2b3c4d,1a2b3c4d", then throws DistributedError naming them unless
  // they are all equal. A no-op for one process.
  void check_models_agree(
      const std::string& stage,
      torch::nn::Module& model,
      const std::function<void(const std::string&)>& log);

 private:
  std::string digests(uint32_t crc, const std::string& what, bool& equal);

  std::unique_ptr<Distributed> dist_;
  bool sync_bn_ = false;
  std::string activity_ = "starting";
};

} // namespace qat::train
