// What the CUDA benchmarks share: timing with CUDA events.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>

#include <functional>
#include <vector>

#include "bench/bench_common.h"

namespace qat::bench {

// Milliseconds per call of each function: `iters` back-to-back calls between
// two CUDA events, in rotation (one batch of each per round, after two warm-up
// rounds), median over `reps` rounds.
inline std::vector<double> time_interleaved(
    const std::vector<std::function<void()>>& fns,
    int64_t iters,
    int64_t reps) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  std::vector<std::vector<double>> samples(fns.size());
  for (int64_t round = -2; round < reps; ++round) {
    for (size_t f = 0; f < fns.size(); ++f) {
      at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
      start.record(stream);
      for (int64_t i = 0; i < iters; ++i)
        fns[f]();
      stop.record(stream);
      stop.synchronize();
      if (round >= 0)
        samples[f].push_back(start.elapsed_time(stop) / iters);
    }
  }
  return medians(std::move(samples));
}

} // namespace qat::bench
