// Format: one home for each family of number formats in qat's layer. The
// integer grids, FP8, the microscaling block formats (NVFP4, MXFP4, MXFP8)
// and ggml's GGUF blocks each have one file under qat/formats/ that says how a
// tensor in that family gets its scales from an observed range, how it is
// fake-quantized with them (or with scales from itself, for dynamic specs),
// and how a weight is converted to stored codes and back. FakeQuantizer, the
// observers and convert() ask format_of(spec) and branch on no format.
//
// Adding a family is a new file in qat/formats/ (over its kernels in kernels/
// and its op in ops/), its line in format_of, and its encoding in each
// exporter that can store it (qat/export/).
//
// The estimators are not formats: LSQ, LSQ+ and PACT (integer grids only) and
// a K-quant's kept or learned representation are FakeQuantizer's state, and
// it keeps them.
#pragma once

#include <torch/types.h>

#include <optional>

#include "qat/convert.h"
#include "qat/observer.h"
#include "qat/spec.h"

namespace qat {

class Format {
 public:
  virtual ~Format() = default;

  // The scale (and zero point) per row that holds [min_val, max_val]: what an
  // observer's range becomes (the rules in qat/observer.h).
  virtual QParams qparams_from_range(
      const torch::Tensor& min_val,
      const torch::Tensor& max_val,
      const QuantSpec& spec) const = 0;

  // x fake-quantized with the given scale and zero point, laid out for the
  // op's `axis` and `group_size` (QuantSpec::op_axis / op_group_size), with
  // the straight-through gradient of the format's op.
  virtual torch::Tensor fake_quantize(
      const torch::Tensor& x,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t group_size,
      const QuantSpec& spec) const = 0;

  // x fake-quantized with scales computed from x itself (dynamic specs). By
  // default the range rule above on each quantization group of x.
  virtual torch::Tensor fake_quantize_dynamic(
      const torch::Tensor& x,
      const QuantSpec& spec) const;

  // convert(): the stored form of a float32 contiguous weight, and back
  // (QuantizedWeight says what each family stores).
  virtual QuantizedWeight quantize(
      const torch::Tensor& weight,
      const QuantSpec& spec,
      const torch::Tensor& scale,
      const torch::Tensor& zero_point) const = 0;
  virtual torch::Tensor codes(const QuantizedWeight& q) const = 0;
  virtual torch::Tensor dequantize(const QuantizedWeight& q) const = 0;
  virtual int64_t storage_bytes(const QuantizedWeight& q) const = 0;
};

// The family of spec's format.
const Format& format_of(const QuantSpec& spec);

// Each family's instance (qat/formats/<family>.cpp).
const Format& integer_format();
const Format& fp8_format();
const Format& microscale_format();
const Format& gguf_format();

// The largest magnitude a range [min_val, max_val] must hold (with zero in
// it): what a symmetric scale or a format's largest value maps to.
torch::Tensor range_amax(
    const torch::Tensor& min_val,
    const torch::Tensor& max_val);

// A zero point as the fake-quant op applies it, int32: a learned (LSQ+) one,
// float, rounded half to even and clamped to the spec's code range; an
// integer one as it is.
torch::Tensor integer_zero_point(
    const torch::Tensor& zero_point,
    const QuantSpec& spec);

// Scale or zero point in the ops' layout for `spec` broadcast to `shape`.
torch::Tensor broadcast_params(
    const torch::Tensor& params,
    const QuantSpec& spec,
    at::IntArrayRef shape);

} // namespace qat
