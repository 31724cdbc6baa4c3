#include "qat/fake_quant.h"

#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

#include "kernels/ref/gguf_kquant_ref.h"
#include "kernels/ref/gguf_ref.h"
#include "ops/ops.h"
#include "qat/format.h"

namespace qat {
namespace {

void check_estimator(const QuantSpec& spec, Estimator estimator) {
  const auto fail = [&](const std::string& why) {
    throw std::invalid_argument(
        std::string("FakeQuantizer(") + spec.to_string() + ", " +
        estimator_name(estimator) + "): " + why);
  };
  if (estimator == Estimator::ste)
    return;
  if (spec.is_gguf_kquant() && estimator != Estimator::lsq) {
    fail(
        "a K-quant learns its own representation (the super-block halves d "
        "and dmin) with lsq; its mins are those, so use lsq or ste");
  }
  if (spec.is_fp8() || spec.is_microscale())
    fail("learned estimators are for integer formats; use ste for FP8");
  if (spec.dynamic())
    fail(
        "dynamic scales are recomputed from each input, nothing to learn; use ste");
  if (estimator == Estimator::lsq_plus && spec.symmetric()) {
    fail(
        "lsq_plus learns a zero point, which needs an affine (symmetric = false) spec");
  }
  if (estimator == Estimator::pact) {
    if (spec.granularity() != Granularity::per_tensor)
      fail("pact learns one clip level: per_tensor only");
    if (spec.is_signed() && !spec.symmetric())
      fail("signed pact clips to [-alpha, alpha]: needs a symmetric spec");
  }
}

} // namespace

const char* estimator_name(Estimator e) {
  switch (e) {
    case Estimator::ste:
      return "ste";
    case Estimator::lsq:
      return "lsq";
    case Estimator::lsq_plus:
      return "lsq_plus";
    case Estimator::pact:
      return "pact";
  }
  return "?";
}

FakeQuantizerImpl::FakeQuantizerImpl(FakeQuantizerOptions options)
    : options_(std::move(options)) {
  reset();
}

void FakeQuantizerImpl::reset() {
  const QuantSpec& spec = options_.spec();
  spec.validate();
  check_estimator(spec, options_.estimator());
  observer_ = register_module("observer", Observer(spec, options_.observer()));
  const Estimator e = options_.estimator();
  // A K-quant learns its halves instead of a scale.
  const bool learned = !spec.is_gguf_kquant() &&
      (e == Estimator::lsq || e == Estimator::lsq_plus);
  const auto zp_dtype = learned ? torch::kFloat : torch::kInt;
  // Scale and zero point take their real shape at the first observation.
  scale_ = learned ? register_parameter("scale", torch::ones({1}))
                   : register_buffer("scale", torch::ones({1}));
  zero_point_ = e == Estimator::lsq_plus
      ? register_parameter("zero_point", torch::zeros({1}))
      : register_buffer("zero_point", torch::zeros({1}, zp_dtype));
  if (e == Estimator::pact) {
    pact_alpha_ = register_parameter(
        "pact_alpha", torch::full({1}, options_.pact_alpha()));
  }
  if (spec.is_gguf_kquant()) {
    gguf_representation_ = register_buffer(
        "gguf_representation", torch::empty({0}, torch::kUInt8));
    if (e == Estimator::lsq) {
      // Shaped at the first search.
      gguf_d_ = register_parameter("gguf_d", torch::empty({0}));
      if (kernels::find_gguf_type(spec.gguf_name())->has_minimum)
        gguf_dmin_ = register_parameter("gguf_dmin", torch::empty({0}));
    }
  }
  observer_on_ =
      register_buffer("observer_enabled", torch::ones({1}, torch::kUInt8));
  fake_quant_on_ =
      register_buffer("fake_quant_enabled", torch::ones({1}, torch::kUInt8));
}

void FakeQuantizerImpl::enable_observer(bool on) {
  observer_on_value_.set(observer_on_, on ? 1 : 0);
}
void FakeQuantizerImpl::enable_fake_quant(bool on) {
  fake_quant_on_value_.set(fake_quant_on_, on ? 1 : 0);
}
bool FakeQuantizerImpl::observer_enabled() const {
  return observer_on_value_.get(observer_on_) != 0;
}
bool FakeQuantizerImpl::fake_quant_enabled() const {
  return fake_quant_on_value_.get(fake_quant_on_) != 0;
}

std::vector<torch::Tensor> FakeQuantizerImpl::quantizer_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& p : named_parameters(/*recurse=*/false))
    out.push_back(p.value());
  return out;
}

void FakeQuantizerImpl::load_qparams(const QParams& q) {
  torch::NoGradGuard no_grad;
  scale_.set_data(q.scale.to(scale_.device()));
  zero_point_.set_data(
      q.zero_point.to(zero_point_.device(), zero_point_.scalar_type()));
}

torch::Tensor FakeQuantizerImpl::quantize(
    const torch::Tensor& x,
    const torch::Tensor& scale,
    const torch::Tensor& zero_point) {
  const QuantSpec& spec = options_.spec();
  const auto axis = spec.op_axis();
  const int64_t group_size = spec.op_group_size(x.dim() > 0 ? x.size(-1) : 1);
  switch (options_.estimator()) {
    case Estimator::ste:
      return format_of(spec).fake_quantize(
          x, scale, zero_point, axis, group_size, spec);
    // The learned estimators are the integer grids' (check_estimator).
    case Estimator::lsq:
    case Estimator::lsq_plus: {
      const double per_scale =
          static_cast<double>(x.numel()) / static_cast<double>(scale.numel());
      const double grad_factor =
          1.0 / std::sqrt(per_scale * static_cast<double>(spec.quant_max()));
      return ops::fake_quant_lsq(
          x,
          scale,
          zero_point,
          axis,
          group_size,
          spec.quant_min(),
          spec.quant_max(),
          grad_factor);
    }
    case Estimator::pact: {
      const auto lower =
          spec.is_signed() ? -pact_alpha_ : torch::zeros_like(pact_alpha_);
      const auto clipped = torch::clamp(
          x, lower.to(x.scalar_type()), pact_alpha_.to(x.scalar_type()));
      const auto pact_scale =
          (pact_alpha_.detach() / static_cast<double>(spec.quant_max()))
              .to(torch::kFloat);
      return ops::fake_quant_affine(
          clipped,
          pact_scale,
          torch::zeros({1}, torch::kInt).to(x.device()),
          std::nullopt,
          0,
          spec.quant_min(),
          spec.quant_max());
    }
  }
  throw std::logic_error("unknown estimator");
}

bool FakeQuantizerImpl::learns_gguf_halves() const {
  return gguf_d_.defined();
}

torch::Tensor FakeQuantizerImpl::gguf_dmin_or_zero() const {
  return gguf_dmin_.defined() ? gguf_dmin_ : torch::zeros_like(gguf_d_);
}

torch::Tensor FakeQuantizerImpl::gguf_representation() const {
  if (!learns_gguf_halves() || gguf_representation_.numel() == 0)
    return gguf_representation_;
  torch::NoGradGuard no_grad;
  return ops::gguf_with_halves(
      gguf_representation_,
      gguf_d_,
      gguf_dmin_or_zero(),
      options_.spec().gguf_name());
}

torch::Tensor FakeQuantizerImpl::gguf_forward(const torch::Tensor& x) {
  const char* type = options_.spec().gguf_name();
  // ggml's search is the observer: the representation follows the input
  // while observing, and stays as it is while not (QAT then trains the
  // weights against fixed scales and mins, or learns the halves, and the
  // export stores them).
  if (observer_enabled() || gguf_representation_.numel() == 0) {
    torch::NoGradGuard no_grad;
    gguf_representation_.set_data(ops::gguf_search(x, type));
    if (learns_gguf_halves()) {
      auto [d, dmin] =
          ops::gguf_representation_halves(gguf_representation_, type);
      gguf_d_.set_data(d);
      if (gguf_dmin_.defined())
        gguf_dmin_.set_data(dmin);
    }
  }
  if (!fake_quant_enabled())
    return x;
  if (!learns_gguf_halves())
    return ops::fake_quant_gguf_fixed(x, gguf_representation_, type);
  // LSQ's g = 1 / sqrt(values per scale * qmax), Q6_K's codes -32..31.
  const auto& info = *kernels::find_gguf_type(type);
  const int max_code =
      info.type == kernels::GgufType::q6_k ? 31 : (1 << info.bits) - 1;
  const double grad_factor = 1.0 /
      std::sqrt(static_cast<double>(kernels::kKQuantBlockSize * max_code));
  return ops::fake_quant_gguf_learned(
      x, gguf_representation_, gguf_d_, gguf_dmin_or_zero(), type, grad_factor);
}

torch::Tensor FakeQuantizerImpl::forward(const torch::Tensor& x) {
  const QuantSpec& spec = options_.spec();
  if (spec.is_gguf_kquant())
    return gguf_forward(x);
  if (spec.dynamic()) {
    if (!fake_quant_enabled())
      return x;
    return format_of(spec).fake_quantize_dynamic(x, spec);
  }
  if (observer_enabled() && options_.estimator() != Estimator::pact) {
    observer_->observe(x);
    load_qparams(observer_->qparams());
  }
  if (!fake_quant_enabled())
    return x;
  return quantize(x, scale_, zero_point_);
}

void FakeQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::FakeQuantizer(" << options_.spec().to_string()
         << ", estimator=" << estimator_name(options_.estimator()) << ')';
}

} // namespace qat
