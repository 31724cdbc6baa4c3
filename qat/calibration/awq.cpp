#include "qat/calibration/awq.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "kernels/ref/microscale_ref.h"
#include "qat/fake_quant.h"
#include "qat/format.h"
#include "qat/modules/linear.h"
#include "qat/prepare.h"

namespace qat {
namespace {

struct Reader {
  std::string name;
  QuantLinearImpl* layer;
  QuantSpec spec;
};

// The run of inputs one scale covers along a weight row, the unit clipping
// chooses a range for; 0 where one range spans rows (per tensor).
int64_t clip_group(const QuantSpec& spec, int64_t in) {
  if (spec.is_microscale())
    return spec.microscale_info()->block_size;
  switch (spec.granularity()) {
    case Granularity::per_group:
      return spec.group_size();
    case Granularity::per_channel:
      return spec.axis() == 0 || spec.axis() == -2 ? in : 0;
    default:
      return 0;
  }
}

// The format's rounding of a weight from its own range.
torch::Tensor rounded(const torch::Tensor& w, const QuantSpec& spec) {
  return format_of(spec).fake_quantize_dynamic(w, spec);
}

// tr(E H E^T): the squared output error over the inputs H sums.
double output_error(const torch::Tensor& e, const torch::Tensor& h) {
  return (e.mm(h) * e).sum().item<double>();
}

// Each reader's |W| over its clip group's largest magnitude (its row's for
// per-tensor formats), averaged over all readers' rows: [in].
torch::Tensor normalized_magnitude(const std::vector<Reader>& readers) {
  torch::Tensor sum;
  int64_t rows = 0;
  for (const auto& r : readers) {
    const torch::Tensor w = r.layer->weight.detach().to(torch::kFloat).abs();
    const int64_t out = w.size(0), in = w.size(1);
    int64_t group = clip_group(r.spec, in);
    if (group <= 0 || in % group != 0)
      group = in;
    const torch::Tensor grouped = w.reshape({out, in / group, group});
    const torch::Tensor normalized =
        (grouped / grouped.amax(-1, true).clamp_min(1e-12)).reshape({out, in});
    sum = sum.defined() ? sum + normalized.sum(0) : normalized.sum(0);
    rows += out;
  }
  return sum / static_cast<double>(rows);
}

// The readers' output error with input scales `s` (their weights times s,
// rounded, divided back), through H.
double scaled_error(
    const std::vector<Reader>& readers,
    const torch::Tensor& s,
    const torch::Tensor& h) {
  double error = 0;
  for (const auto& r : readers) {
    const torch::Tensor w = r.layer->weight.detach().to(torch::kFloat);
    const torch::Tensor q = rounded(w * s, r.spec) / s;
    error += output_error(w - q, h);
  }
  return error;
}

// Clamps each clip group of the reader's (folded) weight to the fraction of
// its range with the least output error through its diagonal block of `h`
// (the folded inputs' Hessian).
void clip(const Reader& r, const torch::Tensor& h, const AwqOptions& options) {
  const torch::Tensor w = r.layer->weight.detach().to(torch::kFloat);
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t group = clip_group(r.spec, in);
  if (group <= 0 || in % group != 0)
    return;
  const int64_t groups = in / group;
  const torch::Tensor w3 = w.reshape({out, groups, group});
  // [groups, group, group]: the blocks of H on the diagonal.
  const torch::Tensor blocks = h.reshape({groups, group, groups, group})
                                   .diagonal(0, 0, 2)
                                   .permute({2, 0, 1});
  const torch::Tensor lo = w3.amin(-1, true), hi = w3.amax(-1, true);
  torch::Tensor best_error =
      torch::full({out, groups}, std::numeric_limits<float>::infinity());
  torch::Tensor best = w3.clone();
  for (int64_t k = 0; k <= options.clip_grid(); ++k) {
    const double ratio = 1.0 -
        options.max_shrink() * k / static_cast<double>(options.clip_grid());
    const torch::Tensor clipped = torch::clamp(w3, lo * ratio, hi * ratio);
    const torch::Tensor e =
        w3 - rounded(clipped.reshape({out, in}), r.spec).reshape(w3.sizes());
    const torch::Tensor error =
        (torch::einsum("ogi,gij->ogj", {e, blocks}) * e).sum(-1);
    const torch::Tensor better = error < best_error;
    best_error = torch::where(better, error, best_error);
    best = torch::where(better.unsqueeze(-1), clipped, best);
  }
  r.layer->weight.copy_(best.reshape({out, in}).to(r.layer->weight.dtype()));
}

} // namespace

std::vector<AwqPointReport> calibrate_awq(
    torch::nn::Module& model,
    const std::vector<ScaleFoldPoint>& points,
    const std::function<void()>& run_batches,
    const AwqOptions& options,
    const AwqHooks& hooks) {
  if (options.grid() < 1 || options.clip_grid() < 1 ||
      !(options.max_shrink() >= 0 && options.max_shrink() < 1)) {
    throw std::invalid_argument(
        "awq: grid and clip_grid must be >= 1 and max_shrink in [0, 1), got "
        "grid " +
        std::to_string(options.grid()) + ", clip_grid " +
        std::to_string(options.clip_grid()) + ", max_shrink " +
        std::to_string(options.max_shrink()));
  }
  std::vector<std::vector<Reader>> quantized(points.size());
  bool any = false;
  for (size_t i = 0; i < points.size(); ++i) {
    for (const auto& [name, layer] : points[i].readers) {
      if (layer->quantizers.weight.is_empty())
        continue;
      quantized[i].push_back(
          {name, layer, layer->quantizers.weight->options().spec()});
      any = true;
    }
  }
  if (!any) {
    throw std::invalid_argument(
        "awq: no Linear layer that reads a scale-folding point has a weight "
        "quantizer");
  }
  const auto inputs =
      collect_fold_inputs(model, points, run_batches, true, hooks.ranks);

  std::vector<AwqPointReport> reports(points.size());
  torch::NoGradGuard no_grad;
  // Last point first: a point's readers are then final (a later point can
  // only rescale the rows of a Linear that produces for it).
  for (size_t i = points.size(); i-- > 0;) {
    const auto& readers = quantized[i];
    AwqPointReport& report = reports[i];
    report.name = points[i].name;
    report.readers = static_cast<int64_t>(readers.size());
    report.tokens = inputs[i].tokens;
    if (readers.empty())
      continue;
    const torch::Tensor h = inputs[i].hessian.to(torch::kFloat);
    const torch::Tensor x_mean = inputs[i].abs_mean().to(torch::kFloat);
    const torch::Tensor w_mean =
        options.duo_scaling() ? normalized_magnitude(readers) : torch::Tensor();
    torch::Tensor best = torch::ones_like(x_mean);
    const double rtn_error = scaled_error(readers, best, h);
    double best_error = rtn_error;
    for (int64_t k = 0; k < options.grid(); ++k) {
      const double alpha = k / static_cast<double>(options.grid());
      torch::Tensor s = x_mean.pow(alpha);
      if (w_mean.defined())
        s = s / (w_mean.pow(1 - alpha) + 1e-4);
      s = s.clamp_min(1e-4);
      s = s / std::sqrt(s.max().item<double>() * s.min().item<double>());
      const double error = scaled_error(readers, s, h);
      if (std::isfinite(error) && error < best_error) {
        best_error = error;
        best = s;
        report.alpha = alpha;
      }
    }
    if (report.alpha >= 0)
      fold_scales(points[i], best);
    // The folded readers see x / s: H becomes diag(1/s) H diag(1/s).
    const torch::Tensor h_folded = h / best.outer(best);
    std::vector<torch::Tensor> unclipped;
    for (const auto& r : readers) {
      unclipped.push_back(r.layer->weight.detach().to(torch::kFloat).clone());
      if (options.clip())
        clip(r, h_folded, options);
    }
    double error = 0;
    for (size_t k = 0; k < readers.size(); ++k) {
      const torch::Tensor w =
          readers[k].layer->weight.detach().to(torch::kFloat);
      error +=
          output_error(unclipped[k] - rounded(w, readers[k].spec), h_folded);
    }
    report.error_vs_rtn = rtn_error > 0 ? error / rtn_error : 0.0;
    if (hooks.progress)
      hooks.progress(report);
  }
  calibrate(model, run_batches);
  return reports;
}

} // namespace qat
