// Training checkpoints that survive crashes: everything a run needs to go on
// exactly where it stopped (model parameters and buffers, quantizer state
// included; optimizer state; the CPU generator's state; the step; the
// composed recipe) in one safetensors file, with a CRC-32 of its contents.
//
// Files are written to a temporary name, fsync'ed and renamed, so a crash
// leaves either the old checkpoint or the new one, never half of one (the
// temporary file a killed writer leaves is removed by the next save). A
// checkpoint that fails to read or to verify is reported and the one before
// it is used.
//
// Example:
//   Checkpoints checkpoints("runs/q/checkpoints/qat.w4a4", /*keep=*/3);
//   checkpoints.save(model, &optimizer, step, config_yaml);
//   if (auto found = checkpoints.latest(warn))
//     found->restore(model, &optimizer);
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace qat::train {

class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Every parameter and buffer, by its dotted name.
NamedTensors module_state(const torch::nn::Module& model);
// Loads `state` into `model`: the same names, nothing missing or left over
// (dtype converted; shapes may differ only where a buffer or lazily shaped
// quantizer parameter has not been sized yet). Throws CheckpointError
// listing every mismatch before anything is changed.
void load_module_state(
    torch::nn::Module& model,
    const NamedTensors& state,
    const std::string& source);

struct Checkpoint {
  std::string path;
  int64_t step = 0;
  bool final = false; // written when the stage finished
  std::string config; // the composed recipe (YAML)
  NamedTensors model;
  std::string optimizer; // torch::serialize archive bytes, "" for none
  torch::Tensor rng;     // the default CPU generator's state

  void restore(torch::nn::Module& model, torch::optim::Optimizer* optimizer)
      const;
};

// Writes atomically (temporary file, fsync, rename, fsync of the directory).
void write_checkpoint(const Checkpoint& checkpoint);
// Reads and verifies; throws CheckpointError naming the file and the problem.
Checkpoint read_checkpoint(const std::string& path);

// One stage's checkpoints: <dir>/step-000200.safetensors, ..., final.safetensors.
class Checkpoints {
 public:
  Checkpoints(std::string dir, int keep);

  // Saves the model, optimizer and generator state at `step`; the oldest
  // step checkpoints beyond `keep` are removed. Returns the path.
  std::string save(
      const torch::nn::Module& model,
      const torch::optim::Optimizer* optimizer,
      int64_t step,
      const std::string& config,
      bool final = false) const;

  // The newest checkpoint that reads and verifies (the final one first);
  // each one that does not is passed to `warn` with the reason, and skipped.
  std::optional<Checkpoint> latest(
      const std::function<void(const std::string&)>& warn) const;

  const std::string& dir() const {
    return dir_;
  }

 private:
  std::vector<std::string> step_files() const; // oldest first
  std::string dir_;
  int keep_;
};

} // namespace qat::train
