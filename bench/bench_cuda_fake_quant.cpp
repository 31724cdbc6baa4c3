// Fake-quant throughput on a CUDA device: qat's ops against ATen's fake-quant
// ops and a device-to-device copy of the same bytes, timed with CUDA events in
// one run, printed as a Markdown table with ratios.
//
//   bench_cuda_fake_quant [--rows 4096] [--cols 4096] [--iters 20] [--reps 15]
//
// Forward cases return the output and the bool mask; the backward case is
// grad * mask. The integer width only moves the clamp bounds, so the cases mix
// int8 and int4 as QAT recipes do (per-group(128) is the int4 weight case).
// ATen has no per-group or per-token op: per group runs as per channel over
// the [rows * cols / 128, 128] view, per token as per channel along axis 0;
// FP8 runs as the eager composition a PyTorch user writes (scale, saturate,
// cast to float8_e4m3fn and back, rescale, compare for the mask).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_cuda.h"
#include "ops/ops.h"

namespace {

struct Args {
  int64_t rows = 4096, cols = 4096, iters = 20, reps = 15;
};

Args parse(int argc, char** argv) {
  Args a;
  qat::bench::parse_flags(
      argc,
      argv,
      {{"--rows", &a.rows},
       {"--cols", &a.cols},
       {"--iters", &a.iters},
       {"--reps", &a.reps}});
  return a;
}

} // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "no CUDA device available\n");
    return 1;
  }
  std::printf(
      "CUDA fake-quant benchmark: %lld x %lld on %s, %lld calls per sample, "
      "median of %lld\n\n",
      static_cast<long long>(args.rows),
      static_cast<long long>(args.cols),
      at::cuda::getCurrentDeviceProperties()->name,
      static_cast<long long>(args.iters),
      static_cast<long long>(args.reps));

  constexpr int64_t kGroup = 128;
  constexpr double kFp8Max = 448.0;
  std::vector<qat::bench::Row> rows;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const char* type_name = dtype == torch::kFloat ? "fp32" : "bf16";
    torch::manual_seed(0);
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    const auto x = torch::randn({args.rows, args.cols}, opts).to(dtype);
    const auto dy = torch::randn({args.rows, args.cols}, opts).to(dtype);
    const auto xf = x.to(torch::kFloat);
    const double n = static_cast<double>(x.numel()),
                 elem = static_cast<double>(x.element_size());
    // Every case reads n elements, writes n elements and reads or writes a
    // 1-byte mask; the copy reads and writes n elements, its time is scaled to
    // the op's byte count so both bandwidth columns compare alike.
    const double op_bytes = n * (2 * elem + 1);
    const double copy_scale = op_bytes / (2 * elem * n);
    auto measure = [&](const std::string& name,
                       const std::function<void()>& ours,
                       const std::function<void()>& aten) {
      const auto ms = qat::bench::time_interleaved(
          {ours, aten, [&] { (void)x.clone(); }}, args.iters, args.reps);
      rows.push_back(
          {name + " " + type_name, ms[0], ms[1], ms[2] * copy_scale, op_bytes});
    };
    const auto ints = opts.dtype(torch::kInt);

    const float scale_t = (xf.abs().max() / 127).item<float>();
    const auto scale_1 = torch::full({1}, scale_t, opts);
    const auto zp_1 = torch::zeros({1}, ints);
    measure(
        "per-tensor int8 fwd+mask",
        [&] {
          qat::ops::fake_quant_affine_cachemask(
              x, scale_1, zp_1, std::nullopt, 0, -128, 127);
        },
        [&] {
          at::fake_quantize_per_tensor_affine_cachemask(
              x, scale_t, 0, -128, 127);
        });

    const auto scale_c = (xf.abs().amax(1) / 127).clamp_min(1e-8);
    const auto zp_c = torch::zeros({args.rows}, ints);
    measure(
        "per-channel int8 fwd+mask",
        [&] {
          qat::ops::fake_quant_affine_cachemask(
              x, scale_c, zp_c, 0, 0, -128, 127);
        },
        [&] {
          at::fake_quantize_per_channel_affine_cachemask(
              x, scale_c, zp_c, 0, -128, 127);
        });

    const auto scale_tok = scale_c.unsqueeze(1);
    const auto zp_tok = zp_c.unsqueeze(1);
    measure(
        "per-token int8 fwd+mask",
        [&] {
          qat::ops::fake_quant_affine_cachemask(
              x, scale_tok, zp_tok, -1, args.cols, -128, 127);
        },
        [&] {
          at::fake_quantize_per_channel_affine_cachemask(
              x, scale_c, zp_c, 0, -128, 127);
        });

    const auto scale_g =
        (xf.abs().reshape({args.rows, -1, kGroup}).amax(-1) / 7)
            .clamp_min(1e-8);
    const auto zp_g = torch::zeros_like(scale_g, torch::kInt);
    const auto x_groups = x.reshape({-1, kGroup});
    const auto scale_rows = scale_g.reshape({-1}), zp_rows = zp_g.reshape({-1});
    measure(
        "per-group(128) int4 fwd+mask",
        [&] {
          qat::ops::fake_quant_affine_cachemask(
              x, scale_g, zp_g, -1, kGroup, -8, 7);
        },
        [&] {
          at::fake_quantize_per_channel_affine_cachemask(
              x_groups, scale_rows, zp_rows, 0, -8, 7);
        });

    auto aten_fp8 = [&](const torch::Tensor& scale) {
      const auto scaled = x.to(torch::kFloat) / scale;
      (void)scaled.clamp(-kFp8Max, kFp8Max)
          .to(at::kFloat8_e4m3fn)
          .to(torch::kFloat)
          .mul(scale)
          .to(dtype);
      (void)(scaled.abs() <= kFp8Max);
    };
    const auto fp8_1 = scale_1 * (127 / kFp8Max);
    measure(
        "fp8 e4m3 per-tensor fwd+mask",
        [&] {
          qat::ops::fake_quant_fp8_cachemask(
              x, fp8_1, std::nullopt, 0, "e4m3fn");
        },
        [&] { aten_fp8(fp8_1); });
    const auto fp8_c = scale_c * (127 / kFp8Max);
    const auto fp8_c_col = fp8_c.unsqueeze(1);
    measure(
        "fp8 e4m3 per-channel fwd+mask",
        [&] { qat::ops::fake_quant_fp8_cachemask(x, fp8_c, 0, 0, "e4m3fn"); },
        [&] { aten_fp8(fp8_c_col); });

    const auto mask = std::get<1>(qat::ops::fake_quant_affine_cachemask(
        x, scale_c, zp_c, 0, 0, -128, 127));
    measure(
        "backward grad*mask",
        [&] { qat::ops::mask_backward(dy, mask); },
        [&] {
          at::fake_quantize_per_tensor_affine_cachemask_backward(dy, mask);
        });
  }
  qat::bench::print_bandwidth_table(rows, 3);
  return 0;
}
