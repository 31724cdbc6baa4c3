// Simulated matmuls on a CUDA device: qat's INT8 and FP8 paths against a bf16
// cuBLAS matmul (at::matmul on bf16) of the same shape, timed with CUDA events
// in one run, printed as Markdown tables of TFLOP/s (2 m k n flops per
// forward, 6 m k n per forward + backward) with the ratio to bf16.
//
//   bench_cuda_qmatmul [--max 16384] [--llm 1] [--iters 10] [--reps 7]
//
// Shapes: m = k = n from 1024 to --max, then (with --llm 1) 8192 tokens
// through Llama-3-8B's projections: QKV (4096 -> 6144), gate+up (4096 ->
// 28672), down (14336 -> 4096). Activations and weights are bf16, outputs bf16.
//
// Forward, per format:
//   GEMM      the tensor-core GEMM on codes alone: at::_int_mm (int32 out) for
//             int8; for FP8 qat::qmatmul, which is at::_scaled_mm with row-wise
//             scales applied in its epilogue (bf16 out)
//   W8A8      qat::quantize_rows of the activations (per token, dynamic) +
//             qat::qmatmul (int8: GEMM + our dequantizing epilogue); weights
//             quantized beforehand, as in inference
//   QAT fwd   qat::quant_linear: the weights quantized too, every call (they
//             change every step in QAT)
// Forward + backward (one layer's training step, gradients to x and w):
//   bf16      at::matmul on bf16
//   fake      the fake-quant path (what QuantLinear ran on CUDA before
//             quant_linear): per-token scales, qat::fake_quant_affine of x
//             and w, bf16 matmul; straight-through backward
//   int8/fp8  the weight quantizer's fake-quant (as QuantLinear runs it) +
//             qat::quant_linear
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_cuda.h"
#include "ops/ops.h"

namespace {

using torch::Tensor;

struct Args {
  int64_t max = 16384, llm = 1, iters = 10, reps = 7;
};

struct Shape {
  std::string name;
  int64_t m, k, n;
};

// The TFLOP/s of one timed case, and its ratio to the baseline's.
std::string cell(double flops, double ms, double baseline_ms) {
  char buf[64];
  std::snprintf(
      buf, sizeof buf, "%.0f (%.2fx)", flops / ms / 1e9, baseline_ms / ms);
  return buf;
}

} // namespace

int main(int argc, char** argv) {
  Args args;
  qat::bench::parse_flags(
      argc,
      argv,
      {{"--max", &args.max},
       {"--llm", &args.llm},
       {"--iters", &args.iters},
       {"--reps", &args.reps}});
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "no CUDA device available\n");
    return 1;
  }
  std::vector<Shape> shapes;
  for (int64_t s = 1024; s <= args.max; s *= 2)
    shapes.push_back({std::to_string(s) + "^3", s, s, s});
  if (args.llm) {
    shapes.push_back({"8192x4096x6144 (QKV)", 8192, 4096, 6144});
    shapes.push_back({"8192x4096x28672 (gate+up)", 8192, 4096, 28672});
    shapes.push_back({"8192x14336x4096 (down)", 8192, 14336, 4096});
  }
  std::printf(
      "Simulated matmuls on %s, bf16 activations and weights, %lld calls per "
      "sample, median of %lld\n\n",
      at::cuda::getCurrentDeviceProperties()->name,
      static_cast<long long>(args.iters),
      static_cast<long long>(args.reps));

  std::vector<std::string> forward_rows, step_rows;
  for (const Shape& s : shapes) {
    torch::manual_seed(0);
    torch::NoGradGuard no_grad;
    const auto bf16 =
        torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    const Tensor x = torch::randn({s.m, s.k}, bf16);
    const Tensor w = torch::randn({s.n, s.k}, bf16) * 0.02;
    const Tensor g = torch::randn({s.m, s.n}, bf16);
    const Tensor amax = w.to(torch::kFloat).abs().amax(1);
    const Tensor s8 = amax / 127, s_fp8 = amax / 448;
    const Tensor zp_w = torch::zeros({s.n}, torch::kInt).to(torch::kCUDA);
    const Tensor w8 = qat::ops::fake_quant_affine(w, s8, zp_w, 0, 0, -128, 127);
    const Tensor w_fp8 = qat::ops::fake_quant_fp8(w, s_fp8, 0, 0, "e4m3fn");
    auto [xq8, xs8, xm8] = qat::ops::quantize_rows(x, std::nullopt, "int8");
    auto [wq8, ws8, wm8] = qat::ops::quantize_rows(w, s8, "int8");
    auto [xq_fp8, xs_fp8, xm_fp8] =
        qat::ops::quantize_rows(x, std::nullopt, "e4m3fn");
    auto [wq_fp8, ws_fp8, wm_fp8] = qat::ops::quantize_rows(w, s_fp8, "e4m3fn");
    const Tensor wq8_t = wq8.t();

    const auto fwd = qat::bench::time_interleaved(
        {[&] { (void)at::matmul(x, w.t()); },
         [&] { (void)at::_int_mm(xq8, wq8_t); },
         [&] {
           auto [q, sc, m] = qat::ops::quantize_rows(x, std::nullopt, "int8");
           (void)qat::ops::qmatmul(
               q, wq8, sc, ws8, std::nullopt, torch::kBFloat16);
         },
         [&] { (void)qat::ops::quant_linear(x, w8, s8, std::nullopt, "int8"); },
         [&] {
           (void)qat::ops::qmatmul(
               xq_fp8, wq_fp8, xs_fp8, ws_fp8, std::nullopt, torch::kBFloat16);
         },
         [&] {
           auto [q, sc, m] = qat::ops::quantize_rows(x, std::nullopt, "e4m3fn");
           (void)qat::ops::qmatmul(
               q, wq_fp8, sc, ws_fp8, std::nullopt, torch::kBFloat16);
         },
         [&] {
           (void)qat::ops::quant_linear(
               x, w_fp8, s_fp8, std::nullopt, "e4m3fn");
         }},
        args.iters,
        args.reps);
    const double flops = 2.0 * s.m * s.k * s.n;
    std::string row = "| " + s.name + " | " + cell(flops, fwd[0], fwd[0]);
    for (size_t i = 1; i < fwd.size(); ++i)
      row += " | " + cell(flops, fwd[i], fwd[0]);
    forward_rows.push_back(row + " |");

    // One layer's training step: gradients to x and w, not accumulated.
    const Tensor xr = x.detach().requires_grad_(true);
    const Tensor wr = w.detach().requires_grad_(true);
    const Tensor zp_x = torch::zeros({s.m, 1}, torch::kInt).to(torch::kCUDA);
    auto step = [&](const std::function<Tensor()>& forward) {
      torch::AutoGradMode grad_mode(true);
      (void)torch::autograd::grad({forward()}, {xr, wr}, {g});
    };
    const auto steps = qat::bench::time_interleaved(
        {[&] { step([&] { return at::matmul(xr, wr.t()); }); },
         [&] {
           step([&] {
             const Tensor sx =
                 (xr.detach().to(torch::kFloat).abs().amax(1, true) / 127)
                     .clamp_min(1.1920929e-7);
             const Tensor xf =
                 qat::ops::fake_quant_affine(xr, sx, zp_x, -1, s.k, -128, 127);
             const Tensor wf =
                 qat::ops::fake_quant_affine(wr, s8, zp_w, 0, 0, -128, 127);
             return at::matmul(xf, wf.t());
           });
         },
         [&] {
           step([&] {
             const Tensor wf =
                 qat::ops::fake_quant_affine(wr, s8, zp_w, 0, 0, -128, 127);
             return qat::ops::quant_linear(xr, wf, s8, std::nullopt, "int8");
           });
         },
         [&] {
           step([&] {
             const Tensor wf =
                 qat::ops::fake_quant_fp8(wr, s_fp8, 0, 0, "e4m3fn");
             return qat::ops::quant_linear(
                 xr, wf, s_fp8, std::nullopt, "e4m3fn");
           });
         }},
        args.iters,
        args.reps);
    const double step_flops = 3 * flops;
    row = "| " + s.name + " | " + cell(step_flops, steps[0], steps[0]);
    for (size_t i = 1; i < steps.size(); ++i)
      row += " | " + cell(step_flops, steps[i], steps[0]);
    step_rows.push_back(row + " |");
    std::fflush(stdout);
  }

  std::printf(
      "Forward, TFLOP/s (ratio to bf16):\n\n"
      "| m x k x n | bf16 | int8 GEMM | int8 W8A8 | int8 QAT fwd | fp8 GEMM | "
      "fp8 W8A8 | fp8 QAT fwd |\n|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : forward_rows)
    std::printf("%s\n", r.c_str());
  std::printf(
      "\nForward + backward of one layer, TFLOP/s (ratio to bf16):\n\n"
      "| m x k x n | bf16 | fake-quant int8 | quant_linear int8 | "
      "quant_linear fp8 |\n|---|---|---|---|---|\n");
  for (const auto& r : step_rows)
    std::printf("%s\n", r.c_str());
  return 0;
}
