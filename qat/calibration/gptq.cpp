#include "qat/calibration/gptq.h"

#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "qat/fake_quant.h"
#include "qat/format.h"
#include "qat/modules/linear.h"
#include "qat/prepare.h"

namespace qat {
namespace {

using torch::indexing::Slice;

// The scale and zero point of every output row for input column `column`
// (in the original column order), [out] each.
QParams column_params(
    const QParams& qparams,
    const QuantSpec& spec,
    int64_t out,
    int64_t column) {
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return {
          qparams.scale.reshape({1}).expand({out}).contiguous(),
          qparams.zero_point.reshape({1}).expand({out}).contiguous()};
    case Granularity::per_channel:
      return {qparams.scale.reshape({out}), qparams.zero_point.reshape({out})};
    case Granularity::per_group: {
      const int64_t group = column / spec.group_size();
      return {
          qparams.scale.reshape({out, -1}).select(1, group).contiguous(),
          qparams.zero_point.reshape({out, -1}).select(1, group).contiguous()};
    }
    case Granularity::per_token:
      break;
  }
  throw std::logic_error("gptq: unsupported granularity");
}

// H + damp * mean(diag H) * I, inverted, as the upper Cholesky factor of the
// inverse (GPTQ's Hinv: row i holds what column i's error does to the columns
// after it). The damping is raised tenfold while H + damping is not
// numerically positive definite.
std::pair<torch::Tensor, double> inverse_cholesky(
    const torch::Tensor& hessian,
    double damp) {
  const double mean_diagonal = hessian.diagonal().mean().item<double>();
  for (double d = damp; d <= damp * 1000 + 1e-12; d *= 10) {
    torch::Tensor damped = hessian.clone();
    damped.diagonal().add_(d * mean_diagonal);
    auto [lower, info] = torch::linalg_cholesky_ex(damped);
    if (info.item<int64_t>() != 0)
      continue;
    auto [upper, info_inverse] =
        torch::linalg_cholesky_ex(torch::cholesky_inverse(lower), true);
    if (info_inverse.item<int64_t>() == 0)
      return {upper, d};
  }
  throw std::runtime_error(
      "gptq: the Hessian is not positive definite even with damping " +
      std::to_string(damp * 1000) + " of its mean diagonal");
}

// tr(E H E^T) for E = a - b: the squared output error over the calibration
// inputs that H sums.
double output_error(
    const torch::Tensor& a,
    const torch::Tensor& b,
    const torch::Tensor& hessian) {
  const torch::Tensor e = a.to(torch::kDouble) - b.to(torch::kDouble);
  return (e.mm(hessian) * e).sum().item<double>();
}

} // namespace

std::string gptq_unsupported(const QuantSpec& spec) {
  if (spec.gguf() != GgufRule::none) {
    return "GGUF blocks take their scales from each block (or a searched "
           "representation), not from calibrated quantizer scales; use rtn";
  }
  if (spec.is_microscale()) {
    return "microscaling formats compute their block scales from each input; "
           "use rtn";
  }
  if (spec.dynamic())
    return "dynamic weight scales follow the weight; GPTQ needs fixed ones";
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return "";
    case Granularity::per_channel:
      if (spec.axis() == 0 || spec.axis() == -2)
        return "";
      return "per-channel scales must be along the outputs (axis 0)";
    case Granularity::per_group:
      if (spec.axis() == -1 || spec.axis() == 1)
        return "";
      return "groups must run along the inputs (axis -1)";
    case Granularity::per_token:
      break;
  }
  return "per-token scales are for activations";
}

GptqResult gptq_quantize(
    const torch::Tensor& weight,
    const torch::Tensor& hessian,
    const QuantSpec& spec,
    const QParams& qparams,
    const GptqOptions& options) {
  if (const std::string why = gptq_unsupported(spec); !why.empty())
    throw std::invalid_argument("gptq: " + spec.to_string() + ": " + why);
  if (weight.dim() != 2 || hessian.dim() != 2 ||
      hessian.size(0) != weight.size(1) || hessian.size(1) != weight.size(1)) {
    std::ostringstream shapes;
    shapes << "weight " << weight.sizes() << ", hessian " << hessian.sizes();
    throw std::invalid_argument(
        "gptq: needs a weight [out, in] and a Hessian [in, in], got " +
        shapes.str());
  }
  if (!(options.damp() > 0) || options.block_size() < 1) {
    throw std::invalid_argument(
        "gptq: damp must be > 0 and block_size >= 1, got damp " +
        std::to_string(options.damp()) + ", block_size " +
        std::to_string(options.block_size()));
  }
  torch::NoGradGuard no_grad;
  const int64_t out = weight.size(0), in = weight.size(1);
  torch::Tensor w = weight.detach().to(torch::kDouble).clone();
  torch::Tensor h = hessian.detach().to(torch::kDouble).clone();
  GptqResult result;
  // An input that never fired carries no information: its weight is zero
  // (GPTQ's dead columns), and H gets a unit diagonal there.
  const torch::Tensor dead = h.diagonal() == 0;
  result.dead_inputs = dead.sum().item<int64_t>();
  h.diagonal().masked_fill_(dead, 1.0);
  w.index_put_({Slice(), dead}, 0.0);
  // order[k]: the original column quantized k-th.
  torch::Tensor order = torch::arange(in, torch::kLong);
  if (options.act_order())
    order = torch::argsort(h.diagonal().cpu(), /*stable=*/true, 0, true);
  const auto order_index = order.to(w.device());
  w = w.index_select(1, order_index);
  const torch::Tensor h_ordered =
      h.index_select(0, order_index).index_select(1, order_index);
  auto [hinv, damp] = inverse_cholesky(h_ordered, options.damp());
  result.damp = damp;
  const torch::Tensor hinv_diagonal = hinv.diagonal().cpu();
  const Format& format = format_of(spec);
  const auto* column_of = order.const_data_ptr<int64_t>();
  torch::Tensor q =
      torch::empty({out, in}, weight.options().dtype(torch::kFloat));
  torch::Tensor latent = torch::empty_like(q);
  for (int64_t i1 = 0; i1 < in; i1 += options.block_size()) {
    const int64_t i2 = std::min(i1 + options.block_size(), in);
    const int64_t count = i2 - i1;
    torch::Tensor w1 = w.index({Slice(), Slice(i1, i2)}).clone();
    torch::Tensor err1 = torch::zeros({out, count}, w.options());
    const torch::Tensor hinv1 = hinv.index({Slice(i1, i2), Slice(i1, i2)});
    for (int64_t i = 0; i < count; ++i) {
      const int64_t column = column_of[i1 + i];
      const QParams p = column_params(qparams, spec, out, column);
      const torch::Tensor updated = w1.select(1, i).to(torch::kFloat);
      latent.select(1, column).copy_(updated);
      // Rounded by the format's own op, as the weight quantizer will.
      const torch::Tensor quantized = format
                                          .fake_quantize(
                                              updated.unsqueeze(1),
                                              p.scale.to(torch::kFloat),
                                              p.zero_point,
                                              0,
                                              0,
                                              spec)
                                          .squeeze(1);
      q.select(1, column).copy_(quantized);
      const torch::Tensor err =
          (w1.select(1, i) - quantized.to(torch::kDouble)) /
          hinv_diagonal[i1 + i].item<double>();
      w1.index({Slice(), Slice(i)})
          .sub_(err.unsqueeze(1).mm(hinv1.index({i, Slice(i)}).unsqueeze(0)));
      err1.select(1, i).copy_(err);
    }
    if (i2 < in) {
      w.index({Slice(), Slice(i2)})
          .sub_(err1.mm(hinv.index({Slice(i1, i2), Slice(i2)})));
    }
  }
  result.weight = q;
  result.latent = latent;
  return result;
}

std::vector<GptqLayerReport> calibrate_gptq(
    torch::nn::Module& model,
    const std::function<void()>& run_batches,
    const GptqOptions& options,
    const GptqHooks& hooks) {
  struct Target {
    std::string name;
    QuantLinearImpl* layer;
    torch::Tensor hessian; // sum of x^T x, float64
    int64_t tokens = 0;
  };
  std::vector<Target> targets;
  for (const auto& [name, layer] : quantized_layers(model)) {
    auto* linear = dynamic_cast<QuantLinearImpl*>(layer);
    if (!linear || linear->quantizers.weight.is_empty())
      continue;
    const QuantSpec& spec = linear->quantizers.weight->options().spec();
    if (const std::string why = gptq_unsupported(spec); !why.empty()) {
      throw std::invalid_argument(
          "gptq: layer '" + name + "' (" + spec.to_string() + "): " + why);
    }
    const int64_t in = linear->options.in_features();
    targets.push_back(
        {name,
         linear,
         torch::zeros(
             {in, in}, linear->weight.options().dtype(torch::kDouble))});
  }
  // The taps are removed whatever happens in the batches.
  struct Taps {
    std::vector<Target>& targets;
    ~Taps() {
      for (auto& t : targets)
        t.layer->input_tap = nullptr;
    }
  } taps{targets};
  for (auto& t : targets) {
    t.layer->input_tap = [&t](const torch::Tensor& input) {
      torch::NoGradGuard no_grad;
      const torch::Tensor x =
          input.detach().reshape({-1, input.size(-1)}).to(torch::kDouble);
      t.hessian.addmm_(x.t(), x);
      t.tokens += x.size(0);
    };
  }
  calibrate(model, run_batches);

  std::vector<GptqLayerReport> reports;
  torch::NoGradGuard no_grad;
  for (auto& t : targets) {
    if (hooks.sum_over_ranks) {
      torch::Tensor tokens =
          torch::full({1}, static_cast<double>(t.tokens), t.hessian.options());
      hooks.sum_over_ranks(t.hessian);
      hooks.sum_over_ranks(tokens);
      t.tokens = static_cast<int64_t>(tokens.item<double>());
    }
    FakeQuantizerImpl& fq = *t.layer->quantizers.weight;
    const QuantSpec& spec = fq.options().spec();
    const QParams qparams{
        fq.scale().detach(),
        integer_zero_point(fq.zero_point().detach(), spec)};
    const torch::Tensor original = t.layer->weight.detach().clone();
    const GptqResult r =
        gptq_quantize(original, t.hessian, spec, qparams, options);
    t.layer->weight.copy_(r.latent);
    GptqLayerReport report;
    report.name = t.name;
    report.tokens = t.tokens;
    report.inputs = original.size(1);
    report.dead_inputs = r.dead_inputs;
    report.damp = r.damp;
    const torch::Tensor rtn = format_of(spec).fake_quantize(
        original,
        qparams.scale,
        qparams.zero_point,
        spec.op_axis(),
        spec.op_group_size(original.size(-1)),
        spec);
    const double rtn_error = output_error(original, rtn, t.hessian);
    report.error_vs_rtn = rtn_error > 0
        ? output_error(original, r.weight, t.hessian) / rtn_error
        : 0.0;
    t.hessian = torch::Tensor(); // one layer's Hessian less held
    if (hooks.progress)
      hooks.progress(report);
    reports.push_back(std::move(report));
  }
  return reports;
}

} // namespace qat
