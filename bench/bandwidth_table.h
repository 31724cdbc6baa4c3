// The table both fake-quant benchmarks print: each case's time for qat, ATen
// and a plain copy of the same bytes, with bandwidths and ratios.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace qat::bench {

struct Row {
  std::string name;
  double ours_ms, aten_ms, copy_ms; // copy_ms: x.clone() scaled to `bytes`
  double bytes;                     // moved by one call of the op
};

// `digits`: decimals of the millisecond columns (GB/s get one fewer).
inline void print_bandwidth_table(const std::vector<Row>& rows, int digits) {
  std::printf(
      "| case | qat ms | ATen ms | copy ms | qat GB/s | copy GB/s | qat vs ATen | qat / copy "
      "bandwidth |\n|---|---|---|---|---|---|---|---|\n");
  const int bw_digits = digits > 0 ? digits - 1 : 0;
  for (const Row& r : rows) {
    const double ours_bw = r.bytes / r.ours_ms / 1e6;
    const double copy_bw = r.bytes / r.copy_ms / 1e6;
    std::printf(
        "| %s | %.*f | %.*f | %.*f | %.*f | %.*f | %.2fx | %.0f%% |\n",
        r.name.c_str(),
        digits,
        r.ours_ms,
        digits,
        r.aten_ms,
        digits,
        r.copy_ms,
        bw_digits,
        ours_bw,
        bw_digits,
        copy_bw,
        r.aten_ms / r.ours_ms,
        100.0 * ours_bw / copy_bw);
  }
}

} // namespace qat::bench
