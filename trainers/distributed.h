// Data-parallel jobs on PyTorch's own distributed engine (c10d): a TCPStore
// rendezvous at MASTER_ADDR:MASTER_PORT, a Gloo process group for CPU tensors
// or NCCL for CUDA ones, and c10d's Reducer (the engine of PyTorch's
// DistributedDataParallel) to average gradients in buckets while backward is
// still running.
//
// Where a process sits in the job comes from the launcher's environment:
//   torchrun  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   SLURM     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of
//             SLURM_JOB_NODELIST (MASTER_ADDR / MASTER_PORT override)
//   neither   one process, no process group: every collective is a no-op.
//
// A collective that fails (a rank died, hung past the timeout, or stopped on
// an error of its own) throws DistributedError naming the ranks that did not
// answer and what the others reported, instead of c10d's bare socket error.
//
// Example:
//   Distributed dist(Launch::from_environment(), torch::kCPU, {});
//   auto sync = dist.data_parallel(model->parameters(), false);
//   auto loss = ...;
//   sync->before_backward(loss, /*average=*/true);
//   loss.backward(); // gradients now hold the mean over the ranks
#pragma once

#include <torch/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace qat::train {

class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Launch {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string launcher = "none"; // "torchrun", "slurm" or "none"

  // From `lookup` (a variable's value, nullopt when unset); throws
  // DistributedError naming the variable when a value is malformed.
  static Launch from_environment(
      const std::function<std::optional<std::string>(const std::string&)>&
          lookup);
  static Launch from_environment(); // the process environment
};

// The first host of a SLURM node list: "gpu[007-009,012],cpu1" -> "gpu007".
std::string first_slurm_host(const std::string& nodelist);

struct DistributedOptions {
  // auto (nccl for CUDA, gloo for CPU), gloo or nccl.
  std::string backend = "auto";
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  int64_t bucket_mb = 25; // gradient bucket size, as DDP's bucket_cap_mb
};

enum class ReduceOp { sum, min, max };

class GradientSync;

class Distributed {
 public:
  // One process.
  Distributed();
  // Joins the job `launch` describes; a world of one needs no process group
  // and makes none.
  Distributed(
      const Launch& launch,
      torch::Device device,
      const DistributedOptions& options);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int64_t rank() const;
  int64_t world_size() const;
  bool is_main() const {
    return rank() == 0;
  }
  // "gloo", "nccl", or "none" for one process.
  const std::string& backend() const;

  // In place, over every rank. `what` names the operation in errors.
  void all_reduce(
      torch::Tensor& tensor,
      ReduceOp op,
      const std::string& what = "all-reduce");
  void all_reduce(
      std::vector<double>& values,
      ReduceOp op,
      const std::string& what = "all-reduce");
  // Every rank's `tensor` stacked in rank order ([world, ...]),
  // differentiably: the gradient that reaches each rank's `tensor` is the sum
  // over the ranks of their gradients with respect to its slot (synchronous
  // BN's statistics, on which every rank's loss depends).
  torch::Tensor gather_over_ranks(const torch::Tensor& tensor);
  // Rank 0's values into every rank's `tensors`, in place.
  void broadcast(
      const std::vector<torch::Tensor>& tensors,
      const std::string& what = "broadcast");
  void barrier(const std::string& what);

  // Averages the gradients of `parameters` over the ranks (see GradientSync).
  // With `find_unused`, parameters that a backward does not reach (a
  // quantizer's scale before fake-quant starts) are found in the loss's
  // graph and count as zero; without it every parameter must get a gradient.
  std::unique_ptr<GradientSync> data_parallel(
      const std::vector<torch::Tensor>& parameters,
      bool find_unused);

  // Seconds spent in collectives since construction: blocking calls from
  // entry to return, gradient buckets from launch to completion (which
  // overlaps backward).
  double communication_seconds() const;

  // Turns the exception a collective or a synchronised backward threw into a
  // DistributedError: asks the other ranks, through the store, which of them
  // are still there and why they stopped, and names those that did not
  // answer. Call it where c10d's exception was caught.
  [[noreturn]] void fail(const std::string& during, const std::exception& e);
  // Runs `body` (a backward whose gradient buckets are all-reduced as it
  // goes); with several ranks, an exception from it goes through fail().
  void guarded(const std::string& what, const std::function<void()>& body);
  // Tells the other ranks that this one stops with `reason` (best effort;
  // they name it in their own errors).
  void announce_failure(const std::string& reason) noexcept;

  struct Impl; // c10d's objects; public for distributed.cpp's helpers

 private:
  std::unique_ptr<Impl> impl_;
};

// Gradient averaging with c10d::Reducer over the parameters given. Per
// micro-batch: the forward pass, before_backward(loss, average),
// loss.backward(). With average=false (all but the last micro-batch of an
// accumulation) gradients accumulate locally and nothing is sent; the last
// backward all-reduces the accumulated sum, bucket by bucket.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual void before_backward(const torch::Tensor& loss, bool average) = 0;
};

} // namespace qat::train
