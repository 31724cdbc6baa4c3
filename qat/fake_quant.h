// FakeQuantizer: the module that fake-quantizes one tensor (a weight or an
// activation) for quantization-aware training. It holds a QuantSpec, an
// Observer, the scale / zero point (buffers, or parameters when learned), and
// two switches: observe (update the range from the data) and fake_quant (apply
// quantization). Everything is saved and loaded with torch::save / torch::load.
//
// Gradient estimators, all through the qat ops (ops/ops.h):
//
// ste       Straight-through estimator with the clipping mask (Bengio et al.
//           2013; the rule of torch.ao's FakeQuantize). With
//           q = zp + round(x / s):
//             dL/dx = dL/dy * [qmin <= q <= qmax]
//           Scale and zero point come from the observer and get no gradient.
//
// lsq       Learned Step size Quantization (Esser et al. 2020). The scale is a
//           parameter, initialised from the observer. With
//           x' = (clamp(q) - zp) * s, and round() differentiated as identity:
//             dx'/ds = round(x/s) - x/s = (x' - x) / s   inside the range
//                    = qmin - zp  or  qmax - zp          below / above it
//           and dL/ds is scaled by g = 1 / sqrt(N * qmax), N the elements
//           per scale.
//
// lsq_plus  LSQ+ (Bhalgat et al. 2020): LSQ plus a learnable float zero point
//           (affine specs). Outside the range the clamp pins x' to the qmin or
//           qmax code, whose real value moves by -s per unit of zp:
//             dx'/dzp = 0 inside the range, -s outside it   (scaled by g too)
//
//           On a GGUF K-quant (q4_k, q5_k, q6_k) lsq learns the format's own
//           representation: each super-block's halves d and dmin are
//           parameters, initialised from ggml's search, while its integer
//           sub-block scales and mins stay as the search chose them; the
//           gradients are LSQ's for x' = d sc q - dmin m (derived at
//           kernels/ref/gguf_kquant_ref.h's kquant_representation_grad),
//           g = 1 / sqrt(256 * qmax), straight through the rounding to half.
//
// pact      PACT (Choi et al. 2018): a learnable clipping level alpha;
//           y = fq(clip(x)), clipping to [0, alpha] (unsigned) or
//           [-alpha, alpha] (signed), with scale alpha / qmax. The quantizer
//           is straight-through on the clipped value, so
//             dL/dx     = dL/dy * [x inside the clip]
//             dL/dalpha = sum dL/dy * [x >= alpha]
//                         - sum dL/dy * [x <= -alpha]          (signed only)
//
// Example:
//   qat::FakeQuantizer fq(qat::FakeQuantizerOptions(
//       qat::QuantSpec().bits(4).granularity(qat::Granularity::per_channel))
//       .estimator(qat::Estimator::lsq));
//   auto wq = fq(weight);  // observes on the first call, then learns the scale
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "qat/buffer_value.h"
#include "qat/observer.h"
#include "qat/spec.h"

namespace qat {

enum class Estimator { ste, lsq, lsq_plus, pact };
const char* estimator_name(Estimator estimator);

struct FakeQuantizerOptions {
  /* implicit */ FakeQuantizerOptions(QuantSpec spec)
      : spec_(std::move(spec)) {}
  TORCH_ARG(QuantSpec, spec);
  TORCH_ARG(ObserverOptions, observer) = {};
  TORCH_ARG(Estimator, estimator) = Estimator::ste;
  // PACT's initial clipping level (the paper's default for activations).
  TORCH_ARG(double, pact_alpha) = 6.0;
};

class FakeQuantizerImpl : public torch::nn::Cloneable<FakeQuantizerImpl> {
 public:
  explicit FakeQuantizerImpl(FakeQuantizerOptions options);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  void enable_observer(bool on = true);
  void enable_fake_quant(bool on = true);
  bool observer_enabled() const;
  bool fake_quant_enabled() const;

  // Current scale / zero point in the op layout (after calibration or
  // learning).
  const torch::Tensor& scale() const {
    return scale_;
  }
  const torch::Tensor& zero_point() const {
    return zero_point_;
  }
  const torch::Tensor& pact_alpha() const {
    return pact_alpha_;
  }
  // GGUF K-quants: each super-block's representation (its half d, dmin and
  // sub-block scales and mins, as ggml stores them), found by ggml's search
  // while the observer is on (and on the first forward), kept while it is
  // off, with the learned halves put in (lsq); empty before that and for
  // every other spec.
  torch::Tensor gguf_representation() const;
  // lsq on a K-quant: the learned halves, float [..., n / 256] (dmin: none
  // for q6_k, an undefined tensor).
  const torch::Tensor& gguf_d() const {
    return gguf_d_;
  }
  const torch::Tensor& gguf_dmin() const {
    return gguf_dmin_;
  }
  // The learnable quantizer parameters (scale, zero point, alpha), for their
  // own optimizer group.
  std::vector<torch::Tensor> quantizer_parameters() const;

  const FakeQuantizerOptions& options() const {
    return options_;
  }
  Observer observer() const {
    return observer_;
  }

  void pretty_print(std::ostream& stream) const override;

 private:
  void load_qparams(const QParams& q);
  torch::Tensor quantize(
      const torch::Tensor& x,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point);

  FakeQuantizerOptions options_;
  Observer observer_{nullptr};
  bool learns_gguf_halves() const;
  // The learned dmin, or zeros for Q6_K (which has none) as the ops take it.
  torch::Tensor gguf_dmin_or_zero() const;
  torch::Tensor gguf_forward(const torch::Tensor& x);

  torch::Tensor scale_, zero_point_, pact_alpha_, gguf_representation_;
  torch::Tensor gguf_d_, gguf_dmin_;
  torch::Tensor observer_on_,
      fake_quant_on_; // uint8 [1] buffers, saved with the model
  BufferValue<uint8_t> observer_on_value_, fake_quant_on_value_;
};
TORCH_MODULE(FakeQuantizer);

} // namespace qat
