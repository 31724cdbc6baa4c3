#include "qat/spec.h"

#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"

#include <sstream>
#include <stdexcept>

namespace qat {
namespace {

[[noreturn]] void invalid(const QuantSpec& spec, const std::string& what) {
  throw std::invalid_argument("QuantSpec " + spec.to_string() + ": " + what);
}

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::per_tensor:
      return "per_tensor";
    case Granularity::per_channel:
      return "per_channel";
    case Granularity::per_group:
      return "per_group";
    case Granularity::per_token:
      return "per_token";
  }
  return "?";
}

} // namespace

void QuantSpec::validate() const {
  if (is_microscale()) {
    const QuantSpec exact = microscale(format_);
    if (!(QuantSpec(*this).dynamic(true) == exact)) {
      invalid(
          *this,
          std::string("the ") + microscale_name() +
              " format is one exact spec: " + exact.to_string() +
              " (its block scales come from each input)");
    }
    if (!dynamic_ && format_ != NumberFormat::nvfp4) {
      invalid(
          *this,
          std::string(microscale_name()) +
              " has only power-of-two block scales, computed from each input: "
              "nothing to calibrate; set dynamic");
    }
    return;
  }
  if (format_ == NumberFormat::int_) {
    if (bits_ < 2 || bits_ > 8) {
      invalid(
          *this,
          "bits must be in 2..8 for integer formats, got " +
              std::to_string(bits_));
    }
    if (narrow_range_ && !(is_signed_ && symmetric_)) {
      invalid(*this, "narrow_range applies to signed symmetric formats only");
    }
  } else {
    if (!symmetric_)
      invalid(
          *this, "FP8 formats are symmetric (no zero point); set symmetric");
    if (!is_signed_)
      invalid(*this, "FP8 formats are signed; set is_signed");
    if (narrow_range_)
      invalid(*this, "narrow_range is for integer formats");
  }
  if (granularity_ == Granularity::per_group && group_size_ <= 0) {
    invalid(
        *this,
        "per_group needs group_size > 0, got " + std::to_string(group_size_));
  }
  if (granularity_ != Granularity::per_group && group_size_ != 0) {
    invalid(
        *this,
        std::string("group_size is only used per_group, but granularity is ") +
            granularity_name(granularity_));
  }
  if (granularity_ == Granularity::per_token && !dynamic_) {
    invalid(
        *this, "per_token scales depend on each input's tokens: set dynamic");
  }
  if (gguf_ != GgufRule::none) {
    const QuantSpec exact = gguf_block(gguf_);
    if (!(*this == exact)) {
      invalid(
          *this,
          std::string("the GGUF ") + gguf_name() +
              " rule is one exact format: " + exact.to_string());
    }
  }
}

QuantSpec QuantSpec::gguf_block(GgufRule rule) {
  const auto& info = kernels::gguf_type_info(
      static_cast<kernels::GgufType>(static_cast<int>(rule) - 1));
  return QuantSpec()
      .bits(info.bits)
      .granularity(Granularity::per_group)
      .axis(-1)
      .group_size(info.block_size)
      .symmetric(!info.has_minimum)
      .dynamic(!kernels::gguf_is_kquant(info.type))
      .gguf(rule);
}

QuantSpec QuantSpec::microscale(NumberFormat format) {
  QuantSpec spec;
  spec.format(format).granularity(Granularity::per_tensor).dynamic(true);
  if (const auto* info = spec.microscale_info())
    spec.bits(info->element_bits);
  return spec;
}

const kernels::MicroscaleFormatInfo* QuantSpec::microscale_info() const {
  switch (format_) {
    case NumberFormat::nvfp4:
      return &kernels::microscale_format_info(kernels::MicroscaleFormat::nvfp4);
    case NumberFormat::mxfp4:
      return &kernels::microscale_format_info(kernels::MicroscaleFormat::mxfp4);
    case NumberFormat::mxfp8:
      return &kernels::microscale_format_info(kernels::MicroscaleFormat::mxfp8);
    default:
      return nullptr;
  }
}

const char* QuantSpec::microscale_name() const {
  const auto* info = microscale_info();
  return info ? info->name : nullptr;
}

const char* QuantSpec::gguf_name() const {
  if (gguf_ == GgufRule::none)
    return nullptr;
  return kernels::gguf_type_info(
             static_cast<kernels::GgufType>(static_cast<int>(gguf_) - 1))
      .name;
}

int64_t QuantSpec::quant_min() const {
  if (is_fp8() || is_microscale())
    return 0;
  if (!is_signed_)
    return 0;
  const int64_t half = int64_t{1} << (bits_ - 1);
  return narrow_range_ ? -(half - 1) : -half;
}

int64_t QuantSpec::quant_max() const {
  if (is_fp8() || is_microscale())
    return 0;
  return is_signed_ ? (int64_t{1} << (bits_ - 1)) - 1
                    : (int64_t{1} << bits_) - 1;
}

double QuantSpec::symmetric_divisor() const {
  const auto qmin = static_cast<double>(quant_min());
  const auto qmax = static_cast<double>(quant_max());
  if (symmetric_scale_ == SymmetricScale::half_range)
    return (qmax - qmin) / 2;
  // Signed: qmax; unsigned: qmax minus the zero point 2^(bits-1). Both are
  // 2^(bits-1) - 1.
  return static_cast<double>((int64_t{1} << (bits_ - 1)) - 1);
}

double QuantSpec::format_max() const {
  switch (format_) {
    case NumberFormat::fp8_e4m3:
      return 448.0;
    case NumberFormat::fp8_e5m2:
      return 57344.0;
    case NumberFormat::nvfp4:
    case NumberFormat::mxfp4:
      return 6.0;
    case NumberFormat::mxfp8:
      return 448.0;
    case NumberFormat::int_:
      break;
  }
  return static_cast<double>(quant_max());
}

const char* QuantSpec::fp8_name() const {
  return format_ == NumberFormat::fp8_e5m2 ? "e5m2" : "e4m3fn";
}

std::optional<int64_t> QuantSpec::op_axis() const {
  switch (granularity_) {
    case Granularity::per_tensor:
      return std::nullopt;
    case Granularity::per_token:
      return -1;
    default:
      return axis_;
  }
}

int64_t QuantSpec::op_group_size(int64_t last_size) const {
  switch (granularity_) {
    case Granularity::per_group:
      return group_size_;
    case Granularity::per_token:
      return last_size;
    default:
      return 0;
  }
}

std::string QuantSpec::to_string() const {
  std::ostringstream out;
  if (gguf_ != GgufRule::none) {
    out << "gguf_" << gguf_name() << ' ';
  }
  if (is_microscale()) {
    const auto* info = microscale_info();
    out << info->name << " block=" << info->block_size;
    if (info->global_scale)
      out << (dynamic_ ? " global=dynamic" : " global=calibrated");
    else if (!dynamic_)
      out << " static";
    return out.str();
  }
  if (is_fp8()) {
    out << "fp8_" << (format_ == NumberFormat::fp8_e4m3 ? "e4m3" : "e5m2");
  } else {
    out << (is_signed_ ? "int" : "uint") << bits_
        << (symmetric_ ? " sym" : " affine") << (narrow_range_ ? " narrow" : "")
        << (symmetric_ && symmetric_scale_ == SymmetricScale::half_range
                ? "(torch.ao)"
                : "");
  }
  out << ' ' << granularity_name(granularity_);
  if (granularity_ == Granularity::per_channel)
    out << "(axis=" << axis_ << ')';
  if (granularity_ == Granularity::per_group) {
    out << "(axis=" << axis_ << ", group=" << group_size_ << ')';
  }
  if (dynamic_)
    out << " dynamic";
  return out.str();
}

bool QuantSpec::operator==(const QuantSpec& o) const {
  return format_ == o.format_ && bits_ == o.bits_ &&
      is_signed_ == o.is_signed_ && granularity_ == o.granularity_ &&
      axis_ == o.axis_ && group_size_ == o.group_size_ &&
      symmetric_ == o.symmetric_ && narrow_range_ == o.narrow_range_ &&
      dynamic_ == o.dynamic_ && gguf_ == o.gguf_ &&
      symmetric_scale_ == o.symmetric_scale_;
}

} // namespace qat
