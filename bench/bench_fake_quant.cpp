// Fake-quant throughput on CPU: qat's kernels, ATen's fake-quant ops and a
// plain copy of the same bytes, measured in one run, printed as a Markdown
// table with ratios (bench_cuda_fake_quant does the same on a GPU).
//
//   bench_fake_quant [--rows 4096] [--cols 4096] [--reps 15]
//                    [--fresh-pages 0|1]
//
// glibc returns every block above 32 MB to the kernel on free, so each op call
// would pay for page faults on its 64 MB output (ATen's and ours alike) and the
// figures would measure the page-fault handler. By default the benchmark keeps
// freed memory in the heap, as a caching allocator does on GPU;
// --fresh-pages 1 measures with glibc's defaults.
//
// Per-channel is int8 along axis 0; per-group is int4 with groups of 128 along
// the last axis (ATen has no per-group op: it runs as per-channel over the
// [rows * cols / 128, 128] view, the usual way to emulate groups with
// torch.ao). GGUF rows compare with the same rule composed of ATen ops (ATen
// has no block fake-quant). Backward is grad * mask from the forward's mask.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "ops/ops.h"

namespace {

struct Args {
  int64_t rows = 4096, cols = 4096, reps = 15;
  bool fresh_pages = false;
};

Args parse(int argc, char** argv) {
  Args a;
  int64_t fresh_pages = 0;
  qat::bench::parse_flags(
      argc,
      argv,
      {{"--rows", &a.rows},
       {"--cols", &a.cols},
       {"--reps", &a.reps},
       {"--fresh-pages", &fresh_pages}});
  a.fresh_pages = fresh_pages == 1;
  return a;
}

// Median wall times (ms) of the functions, measured in rotation (one run of
// each per round, after two warm-up rounds) so that all of them see the same
// machine: on a shared VM the noise moves between seconds, not within a round.
std::vector<double> time_interleaved(
    const std::vector<std::function<void()>>& fns,
    int64_t reps) {
  std::vector<std::vector<double>> samples(fns.size());
  for (int64_t round = -2; round < reps; ++round) {
    for (size_t f = 0; f < fns.size(); ++f) {
      const auto start = std::chrono::steady_clock::now();
      fns[f]();
      const double ms = std::chrono::duration<double, std::milli>(
                            std::chrono::steady_clock::now() - start)
                            .count();
      if (round >= 0)
        samples[f].push_back(ms);
    }
  }
  return qat::bench::medians(std::move(samples));
}

} // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (!args.fresh_pages) {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 256 << 20);
  }
  std::printf(
      "fake-quant benchmark: %lld x %lld, CPU, %d threads, median of %lld\n\n",
      static_cast<long long>(args.rows),
      static_cast<long long>(args.cols),
      at::get_num_threads(),
      static_cast<long long>(args.reps));

  constexpr int64_t kGroup = 128;
  std::vector<qat::bench::Row> rows;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const char* type_name = dtype == torch::kFloat ? "fp32" : "bf16";
    torch::manual_seed(0);
    const auto opts = torch::TensorOptions();
    const auto x = torch::randn({args.rows, args.cols}, opts).to(dtype);
    const auto dy = torch::randn({args.rows, args.cols}, opts).to(dtype);
    const double n = static_cast<double>(x.numel()),
                 elem = static_cast<double>(x.element_size());
    // Bytes the op moves: it reads x (or dy) and writes an output like it and
    // a 1-byte mask (or reads the mask). The copy, x.clone(), reads x and
    // writes a new tensor like it: 2 * elem bytes per element; its time is
    // scaled to the op's byte count so both bandwidth columns compare alike.
    const double op_bytes = n * (2 * elem + 1);
    const double copy_scale = op_bytes / (2 * elem * n);
    auto measure = [&](const std::string& name,
                       const std::function<void()>& ours,
                       const std::function<void()>& aten) {
      const auto ms =
          time_interleaved({ours, aten, [&] { (void)x.clone(); }}, args.reps);
      rows.push_back(
          {name + " " + type_name, ms[0], ms[1], ms[2] * copy_scale, op_bytes});
    };

    // Per channel, int8, axis 0.
    const auto scale_c =
        (x.to(torch::kFloat).abs().amax(1) / 127).clamp_min(1e-8);
    const auto zp_c = torch::zeros({args.rows}, opts.dtype(torch::kInt));
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

    // Per group of 128, int4, last axis.
    const auto scale_g =
        (x.to(torch::kFloat).abs().reshape({args.rows, -1, kGroup}).amax(-1) /
         7)
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

    // GGUF Q4_0 (blocks of 32, scale from each block's largest magnitude),
    // against the same rule composed of ATen ops.
    const auto x_blocks = x.to(torch::kFloat).reshape({-1, 32});
    measure(
        "GGUF q4_0 fwd+mask",
        [&] { qat::ops::fake_quant_gguf_cachemask(x, "q4_0"); },
        [&] {
          const auto largest =
              x_blocks.gather(1, x_blocks.abs().argmax(1, true));
          const auto d = largest / -8.0;
          const auto inv = torch::where(d != 0, d.reciprocal(), 0);
          const auto q = torch::trunc(x_blocks * inv + 8.5).clamp(0, 15);
          (void)((q - 8) * d.to(torch::kHalf).to(torch::kFloat))
              .reshape(x.sizes())
              .to(dtype);
        });

    // GGUF Q4_K under a kept representation (what a QAT step runs), against
    // its rule composed of ATen ops on the same sub-block scales and mins:
    // clamp(round((x + m) / d), 0, 15) * d - m per sub-block of 32.
    const auto reps = qat::ops::gguf_search(x, "q4_k");
    const auto sub = x.to(torch::kFloat).reshape({-1, 32});
    const auto sub_scale = torch::rand({sub.size(0), 1}).mul_(0.01).add_(1e-3);
    const auto sub_min = torch::rand({sub.size(0), 1}).mul_(0.05);
    measure(
        "GGUF q4_k (kept scales) fwd+mask",
        [&] { qat::ops::fake_quant_gguf_fixed_cachemask(x, reps, "q4_k"); },
        [&] {
          const auto q = torch::round((sub + sub_min) / sub_scale);
          (void)(q.clamp(0, 15) * sub_scale - sub_min)
              .reshape(x.sizes())
              .to(dtype);
        });

    // Microscaling formats (dynamic block scales, compressed-tensors' rules),
    // against the same rules composed of ATen ops: the block amax, its scale
    // (MX: the power of two by the float bits, as round_to_power_2 takes it;
    // NVFP4: an e4m3 cast under the global scale), and the element grid
    // (e2m1 by three rounding steps, or the e4m3 cast).
    const auto e2m1 = [](const torch::Tensor& y) {
      const auto a = y.abs().clamp_max(6.0);
      const auto r = torch::where(
          a < 2,
          torch::round(a * 2) / 2,
          torch::where(a < 4, torch::round(a), torch::round(a / 2) * 2));
      return torch::sign(y) * r;
    };
    const auto mx_scale = [](const torch::Tensor& amax, int emax) {
      const auto bits = amax.view(torch::kInt);
      const auto power =
          ((bits + (1 << 21)).bitwise_and(static_cast<int32_t>(0xFF800000)))
              .view(torch::kFloat);
      return power / static_cast<double>(1 << emax);
    };
    const auto blocks32 = x.to(torch::kFloat).reshape({-1, 32});
    const auto blocks16 = x.to(torch::kFloat).reshape({-1, 16});
    measure(
        "MXFP4 fwd+mask",
        [&] { qat::ops::fake_quant_microscale_cachemask(x, "mxfp4", {}); },
        [&] {
          const auto s = mx_scale(blocks32.abs().amax(1, true), 2);
          const auto y = blocks32 / s;
          (void)(y.abs() <= 6);
          (void)(e2m1(y) * s).reshape(x.sizes()).to(dtype);
        });
    measure(
        "MXFP8 fwd+mask",
        [&] { qat::ops::fake_quant_microscale_cachemask(x, "mxfp8", {}); },
        [&] {
          const auto s = mx_scale(blocks32.abs().amax(1, true), 8);
          const auto y = blocks32 / s;
          (void)(y.abs() <= 448);
          (void)(y.clamp(-448, 448).to(torch::kFloat8_e4m3fn).to(torch::kFloat) * s)
              .reshape(x.sizes())
              .to(dtype);
        });
    measure(
        "NVFP4 fwd+mask",
        [&] { qat::ops::fake_quant_microscale_cachemask(x, "nvfp4", {}); },
        [&] {
          const auto g = 2688.0 / blocks16.abs().max();
          const auto s = (g * blocks16.abs().amax(1, true) / 6)
                             .clamp(-448, 448)
                             .to(torch::kFloat8_e4m3fn)
                             .to(torch::kFloat) /
              g;
          const auto y = blocks16 / s;
          (void)(y.abs() <= 6);
          (void)(e2m1(y) * s).reshape(x.sizes()).to(dtype);
        });

    // Backward: grad * mask (ATen's cachemask backward is exactly dY * mask).
    const auto mask = std::get<1>(qat::ops::fake_quant_affine_cachemask(
        x, scale_c, zp_c, 0, 0, -128, 127));
    measure(
        "backward grad*mask",
        [&] { qat::ops::mask_backward(dy, mask); },
        [&] {
          at::fake_quantize_per_tensor_affine_cachemask_backward(dy, mask);
        });
  }
  qat::bench::print_bandwidth_table(rows, 2);
  return 0;
}
