#include "qat/calibration/smoothquant.h"

#include <torch/torch.h>

#include <stdexcept>

#include "qat/fake_quant.h"
#include "qat/modules/linear.h"
#include "qat/prepare.h"

namespace qat {
namespace {

double outlier_ratio(const torch::Tensor& abs_max) {
  const double median = abs_max.median().item<double>();
  return median > 0 ? abs_max.max().item<double>() / median : 0.0;
}

} // namespace

torch::Tensor smoothquant_scales(
    const torch::Tensor& input_abs_max,
    const std::vector<torch::Tensor>& reader_weights,
    double alpha) {
  torch::Tensor weight_max;
  for (const auto& w : reader_weights) {
    const torch::Tensor m =
        std::get<0>(w.detach().abs().max(0)).to(torch::kDouble);
    weight_max = weight_max.defined() ? torch::maximum(weight_max, m) : m;
  }
  const torch::Tensor x = input_abs_max.to(torch::kDouble);
  const torch::Tensor live = (x > 0) & (weight_max > 0);
  const torch::Tensor s = x.clamp_min(1e-12).pow(alpha) /
      weight_max.clamp_min(1e-12).pow(1 - alpha);
  return torch::where(live, s, torch::ones_like(s)).to(torch::kFloat);
}

std::vector<SmoothQuantPointReport> calibrate_smoothquant(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    const SmoothQuantOptions& options,
    const SmoothQuantHooks& hooks) {
  if (!(options.alpha() >= 0 && options.alpha() <= 1)) {
    throw std::invalid_argument(
        "smoothquant: alpha must be in [0, 1], got " +
        std::to_string(options.alpha()));
  }
  std::vector<bool> smoothed(points.size(), false);
  bool any = false;
  for (size_t i = 0; i < points.size(); ++i) {
    for (const auto& reader : points[i].readers)
      smoothed[i] = smoothed[i] || !reader.second->quantizers.input.is_empty();
    any = any || smoothed[i];
  }
  if (!any) {
    throw std::invalid_argument(
        "smoothquant: no Linear layer that reads a scale-folding point "
        "quantizes its inputs; SmoothQuant moves activation outliers into "
        "weights and serves W8A8-style schemes (for weight-only schemes use "
        "awq or gptq)");
  }
  const auto inputs =
      collect_fold_inputs(model, points, run_batches, false, hooks.ranks);
  std::vector<SmoothQuantPointReport> reports;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < points.size(); ++i) {
    if (!smoothed[i])
      continue;
    std::vector<torch::Tensor> weights;
    for (const auto& reader : points[i].readers)
      weights.push_back(reader.second->weight);
    const torch::Tensor s =
        smoothquant_scales(inputs[i].abs_max, weights, options.alpha());
    fold_scales(points[i], s);
    SmoothQuantPointReport report;
    report.name = points[i].name;
    report.tokens = inputs[i].tokens;
    report.outlier_ratio_before = outlier_ratio(inputs[i].abs_max);
    report.outlier_ratio_after =
        outlier_ratio(inputs[i].abs_max / s.to(torch::kDouble));
    if (hooks.progress)
      hooks.progress(report);
    reports.push_back(std::move(report));
  }
  calibrate(model, run_batches);
  return reports;
}

} // namespace qat
