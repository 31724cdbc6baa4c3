#include "trainers/job/ranks.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstdio>

#include <zlib.h>

#include "qat/fake_quant.h"
#include "qat/modules/conv.h"
#include "trainers/checkpoint.h"

namespace qat::train {

Ranks::Ranks(const recipe::Recipe& recipe, torch::Device& device) {
  const auto launch = Launch::from_environment();
  DistributedOptions d;
  d.backend = recipe.get<std::string>("run.distributed.backend", "auto");
  if (d.backend != "auto" && d.backend != "gloo" && d.backend != "nccl")
    recipe.fail_at(
        "run.distributed.backend",
        "expected auto, gloo or nccl, got '" + d.backend + "'");
  const double timeout = recipe.get<double>("run.distributed.timeout_s", 300.0);
  if (!(timeout > 0))
    recipe.fail_at("run.distributed.timeout_s", "must be positive");
  d.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
  d.bucket_mb = recipe.get<int64_t>("run.distributed.bucket_mb", 25);
  if (d.bucket_mb <= 0)
    recipe.fail_at("run.distributed.bucket_mb", "must be positive");
  sync_bn_ = recipe.get<bool>("run.distributed.sync_bn", false);
  // One GPU per process, the LOCAL_RANK-th of its node, also the current
  // one (for tensors made on "cuda" without an index, and NCCL's barrier).
  if (device.is_cuda() && launch.world_size > 1) {
    if (launch.local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
      throw DistributedError(
          "LOCAL_RANK " + std::to_string(launch.local_rank) +
          " but this node has " + std::to_string(torch::cuda::device_count()) +
          " GPUs: start at most one rank per GPU");
    device = torch::Device(
        torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank));
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
  }
  dist_ = std::make_unique<Distributed>(launch, device, d);
}

void Ranks::make_data_parallel(torch::nn::Module& model) {
  if (size() == 1)
    return;
  Distributed* d = dist_.get();
  for (const auto& item : model.named_modules()) {
    if (auto* q = item.value()->as<FakeQuantizerImpl>()) {
      const auto& name = item.key();
      // Weights are the same on every rank, and so are their ranges.
      if (name.size() >= 16 &&
          name.compare(name.size() - 16, 16, "weight_quantizer") == 0)
        continue;
      q->observer()->set_range_reduction(
          [this, d, name](torch::Tensor& lo, torch::Tensor& hi, bool mean) {
            const auto what = activity_ + ": " + name + "'s observer";
            if (mean) {
              auto both = torch::stack({lo, hi});
              d->all_reduce(both, ReduceOp::sum, what);
              both.div_(static_cast<double>(d->world_size()));
              lo = both[0];
              hi = both[1];
            } else { // one MIN for both: max(hi) = -min(-hi)
              auto both = torch::stack({lo, -hi});
              d->all_reduce(both, ReduceOp::min, what);
              lo = both[0];
              hi = -both[1];
            }
          });
    } else if (auto* conv = item.value()->as<QuantConv2dImpl>()) {
      if (sync_bn_)
        conv->set_batch_stats_gather([d](const torch::Tensor& local) {
          return d->gather_over_ranks(local);
        });
    }
  }
}

std::vector<double> Ranks::values(double value, const std::string& what) {
  std::vector<double> all(static_cast<size_t>(size()), 0.0);
  all[static_cast<size_t>(dist_->rank())] = value;
  dist_->all_reduce(all, ReduceOp::sum, what);
  return all;
}

bool Ranks::all_equal(const std::vector<double>& values) {
  return std::adjacent_find(
             values.begin(), values.end(), std::not_equal_to<>()) ==
      values.end();
}

// Every rank's CRC-32, in rank order; `equal` says whether they all are.
std::string Ranks::digests(uint32_t crc, const std::string& what, bool& equal) {
  const auto all = values(static_cast<double>(crc), what);
  std::string text;
  for (const double d : all) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(d));
    text += (text.empty() ? "" : ",") + std::string(hex);
  }
  equal = all_equal(all);
  return text;
}

// Ranks started with different recipes (another override on one node)
// would train different models in lockstep without noticing.
void Ranks::check_same_recipe(const std::string& config_text) {
  if (size() == 1)
    return;
  const uLong crc = crc32_z(
      crc32(0L, Z_NULL, 0),
      reinterpret_cast<const Bytef*>(config_text.data()),
      static_cast<z_size_t>(config_text.size()));
  bool equal = false;
  const auto text = digests(
      static_cast<uint32_t>(crc), "comparing the ranks' recipes", equal);
  if (!equal)
    throw DistributedError(
        "the ranks were started with different recipes (CRC-32 of the "
        "composed recipe per rank: " +
        text +
        "); start every rank with the same recipe and overrides (compare "
        "with --print-config)");
}

// Data parallelism keeps the ranks' models equal by construction; this checks
// it. Each rank's digest is the CRC-32 of its parameters and buffers (raw
// bytes, in name order).
void Ranks::check_models_agree(
    const std::string& stage,
    torch::nn::Module& model,
    const std::function<void(const std::string&)>& log) {
  if (size() == 1)
    return;
  auto state = module_state(model);
  std::sort(state.begin(), state.end(), [](const auto& a, const auto& b) {
    return a.first < b.first;
  });
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const auto& [name, tensor] : state) {
    const auto bytes = tensor.detach().cpu().contiguous();
    crc = crc32_z(
        crc,
        static_cast<const Bytef*>(bytes.data_ptr()),
        static_cast<z_size_t>(bytes.nbytes()));
  }
  bool equal = false;
  const auto text = digests(
      static_cast<uint32_t>(crc),
      stage + ": comparing the ranks' models",
      equal);
  log(text);
  if (!equal)
    throw DistributedError(
        stage + ": the ranks' models differ after training (CRC-32 per rank: " +
        text + ")");
}

} // namespace qat::train
