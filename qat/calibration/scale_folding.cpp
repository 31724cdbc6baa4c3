#include "qat/calibration/scale_folding.h"

#include <torch/torch.h>

#include <stdexcept>

#include "qat/modules/linear.h"
#include "qat/prepare.h"

namespace qat {

void fold_scales(const ScaleFoldPoint& point, const torch::Tensor& scale) {
  const int64_t channels = point.producer_weight.size(0);
  if (scale.dim() != 1 || scale.size(0) != channels) {
    throw std::invalid_argument(
        "fold_scales: " + point.name + " has " + std::to_string(channels) +
        " channels, the scale " + std::to_string(scale.numel()));
  }
  if (!(scale > 0).all().item<bool>() || !scale.isfinite().all().item<bool>())
    throw std::invalid_argument(
        "fold_scales: " + point.name + ": scales must be positive and finite");
  torch::NoGradGuard no_grad;
  const torch::Tensor s = scale.to(point.producer_weight.options());
  if (point.producer_weight.dim() == 1)
    point.producer_weight.div_(s);
  else
    point.producer_weight.div_(s.unsqueeze(1));
  if (point.producer_bias.defined())
    point.producer_bias.div_(s);
  for (const auto& [name, reader] : point.readers) {
    if (reader->weight.size(1) != channels) {
      throw std::invalid_argument(
          "fold_scales: " + name + " reads " +
          std::to_string(reader->weight.size(1)) + " inputs, " + point.name +
          " produces " + std::to_string(channels));
    }
    reader->weight.mul_(s.to(reader->weight.options()).unsqueeze(0));
  }
}

std::vector<FoldPointInputs> collect_fold_inputs(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    bool hessians,
    const FoldInputHooks& hooks) {
  std::vector<FoldPointInputs> inputs(points.size());
  std::vector<QuantLinearImpl*> tapped;
  // The taps are removed whatever happens in the batches.
  struct Taps {
    std::vector<QuantLinearImpl*>& layers;
    ~Taps() {
      for (auto* layer : layers)
        layer->input_tap = nullptr;
    }
  } taps{tapped};
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].readers.empty())
      throw std::invalid_argument(
          "scale folding: " + points[i].name + " has no readers");
    QuantLinearImpl* reader = points[i].readers.front().second;
    const int64_t channels = reader->weight.size(1);
    FoldPointInputs& in = inputs[i];
    const auto options = reader->weight.options().dtype(torch::kDouble);
    in.abs_sum = torch::zeros({channels}, options);
    in.abs_max = torch::zeros({channels}, options);
    if (hessians)
      in.hessian = torch::zeros({channels, channels}, options);
    reader->input_tap = [&in](const torch::Tensor& input) {
      torch::NoGradGuard no_grad;
      const torch::Tensor x =
          input.detach().reshape({-1, input.size(-1)}).to(torch::kDouble);
      const torch::Tensor a = x.abs();
      in.abs_sum.add_(a.sum(0));
      in.abs_max.copy_(torch::maximum(in.abs_max, std::get<0>(a.max(0))));
      if (in.hessian.defined())
        in.hessian.addmm_(x.t(), x);
      in.tokens += x.size(0);
    };
    tapped.push_back(reader);
  }
  set_observers(model, false);
  set_fake_quant(model, false);
  {
    torch::NoGradGuard no_grad;
    run_batches();
  }
  for (auto& in : inputs) {
    if (hooks.sum_over_ranks) {
      torch::Tensor tokens = torch::full(
          {1}, static_cast<double>(in.tokens), in.abs_sum.options());
      hooks.sum_over_ranks(in.abs_sum);
      hooks.sum_over_ranks(tokens);
      if (in.hessian.defined())
        hooks.sum_over_ranks(in.hessian);
      in.tokens = static_cast<int64_t>(tokens.item<double>());
    }
    if (hooks.max_over_ranks)
      hooks.max_over_ranks(in.abs_max);
  }
  return inputs;
}

} // namespace qat
