// QuantConv2d: torch::nn::Conv2d with a fake-quantized weight and optional
// input / output quantizers, and optionally a folded BatchNorm2d (Conv+BN).
//
// The weight quantizer sees the weight as [out_channels, in/groups * kh * kw],
// so per_channel is per output channel (axis 0) and per_group groups run along
// the flattened reduction dimension (axis -1), as for Linear.
//
// Conv+BN folding follows PyTorch's ConvBn QAT modules
// (torch.ao.nn.intrinsic.qat, "approximate" forward): with
// gamma' = gamma / sqrt(running_var + eps),
//   y = BN( conv(x, fq(W * gamma')) / gamma' + b )
// so the weight that is quantized is the folded one that will be served, while
// BN still normalises with batch statistics in training (updating its running
// statistics) until freeze_bn_stats(), after which it uses the running ones.
// While no weight quantizer is active the module computes exactly
// conv then BN, bit for bit like torch::nn::Conv2d + BatchNorm2d.
// to_float() returns the folded Conv2d: W * gamma' and
// (b - running_mean) * gamma' + beta. convert() quantizes that folded weight,
// and the converted module serves the folded conv (BN no longer runs): in eval
// mode the same values as the fake-quantized Conv+BN, up to float rounding.
//
// Data-parallel training can make BN synchronous (as torch.nn.SyncBatchNorm):
// with a batch statistics gather set, training batches are normalised with
// the mean and variance of the global batch, all ranks' shards together.
#pragma once

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

#include <functional>
#include <optional>

#include "qat/modules/quantizers.h"

namespace qat {

class QuantConv2dImpl : public torch::nn::Cloneable<QuantConv2dImpl>,
                        public QuantizedLayer {
 public:
  QuantConv2dImpl(
      torch::nn::Conv2dOptions options,
      LayerQuantSpecs specs,
      std::optional<torch::nn::BatchNorm2dOptions> batch_norm = std::nullopt);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  // Conv+BN: stop updating BN's running statistics and normalise with them.
  void freeze_bn_stats(bool frozen = true) {
    bn_frozen_ = frozen;
  }
  bool bn_frozen() const {
    return bn_frozen_;
  }
  // Gathers this rank's per-channel statistics [3, C] (element count, mean,
  // sum of squared deviations from that mean) with every other rank's into
  // [ranks, 3, C], differentiably: its backward returns to each rank the sum
  // over the ranks of the gradients with respect to its statistics. Unset
  // (the default): BN uses the local batch alone.
  using BatchStatsGather = std::function<torch::Tensor(const torch::Tensor&)>;
  void set_batch_stats_gather(BatchStatsGather gather) {
    batch_stats_gather_ = std::move(gather);
  }
  // The float Conv2d to serve: with BN folded into its weight and bias.
  torch::nn::Conv2d to_float() const;
  void pretty_print(std::ostream& stream) const override;
  const char* layer_type() const override {
    return "Conv2d";
  }

  torch::nn::Conv2dOptions options;
  std::optional<torch::nn::BatchNorm2dOptions> batch_norm_options;
  torch::Tensor weight, bias;
  torch::nn::BatchNorm2d batch_norm{nullptr};

 protected:
  torch::nn::Module& layer_module() override {
    return *this;
  }
  // The weight to serve: with BatchNorm folded in, if there is one.
  torch::Tensor quantizer_input() const override;

 private:
  torch::Tensor conv(
      const torch::Tensor& x,
      const torch::Tensor& w,
      const torch::Tensor& b) const;
  // gamma / sqrt(running_var + eps), per output channel.
  torch::Tensor bn_scale() const;
  // (b - running_mean) * gamma' + beta: the bias of the folded conv.
  torch::Tensor folded_bias() const;
  // Training-mode BN over the global batch (see set_batch_stats_gather).
  torch::Tensor synchronized_batch_norm(const torch::Tensor& y);
  bool bn_frozen_ = false;
  BatchStatsGather batch_stats_gather_;
};

class QuantConv2d : public torch::nn::ModuleHolder<QuantConv2dImpl> {
 public:
  using torch::nn::ModuleHolder<QuantConv2dImpl>::ModuleHolder;
  // From a float Conv2d, and the BatchNorm2d that follows it to fold.
  static QuantConv2d from_float(
      const torch::nn::Conv2d& conv,
      const LayerQuantSpecs& specs,
      const torch::nn::BatchNorm2d& batch_norm = nullptr);
};

} // namespace qat
