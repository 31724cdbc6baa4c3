// What the fake-quant benchmarks share: integer flags, medians, and the table
// they print (each case's time for qat, ATen and a plain copy of the same
// bytes, with bandwidths and ratios).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace qat::bench {

// "--name value" pairs into the integers `flags` points at; anything else
// prints the usage and exits with 2.
inline void parse_flags(
    int argc,
    char** argv,
    const std::map<std::string, int64_t*>& flags) {
  for (int i = 1; i < argc; i += 2) {
    const auto it = flags.find(argv[i]);
    if (it == flags.end() || i + 1 >= argc) {
      std::fprintf(
          stderr,
          "unknown or incomplete argument %s\nusage: %s",
          argv[i],
          argv[0]);
      for (const auto& [name, value] : flags)
        std::fprintf(
            stderr, " [%s %lld]", name.c_str(), static_cast<long long>(*value));
      std::fprintf(stderr, "\n");
      std::exit(2);
    }
    *it->second = std::stoll(argv[i + 1]);
  }
}

// The median of each function's samples.
inline std::vector<double> medians(std::vector<std::vector<double>> samples) {
  std::vector<double> out;
  for (auto& s : samples) {
    std::nth_element(s.begin(), s.begin() + s.size() / 2, s.end());
    out.push_back(s[s.size() / 2]);
  }
  return out;
}

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
