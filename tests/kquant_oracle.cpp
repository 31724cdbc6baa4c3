// Oracle for kernels/ref/gguf_kquant_ref: compares our Q4_K, Q5_K and Q6_K
// with ggml's own reference C code (quantize_row_q*_K_ref,
// dequantize_row_q*_K from llama.cpp's ggml-quants.c), byte for byte and bit
// for bit, on many kinds of super-block. No gtest, no Torch: it is linked by
// tests/kquant_oracle.sh against ggml-quants.c compiled from the
// llama-cpp-python sdist (or against an installed libggml-base.so).
//
//   kquant_oracle [--label TEXT] [--blocks-scale N] [--fp16-sweep]
//                 [--max-print N] [--report-only]
//
// Exit status 1 on any mismatch (0 with --report-only), 2 on a usage error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/ref/gguf_kquant_ref.h"

// ggml's C functions (ggml-quants.h), declared with untyped block pointers so
// that this file needs no ggml header.
extern "C" {
void quantize_row_q4_K_ref(const float* x, void* y, int64_t k);
void quantize_row_q5_K_ref(const float* x, void* y, int64_t k);
void quantize_row_q6_K_ref(const float* x, void* y, int64_t k);
void dequantize_row_q4_K(const void* x, float* y, int64_t k);
void dequantize_row_q5_K(const void* x, float* y, int64_t k);
void dequantize_row_q6_K(const void* x, float* y, int64_t k);
// From the shim tests/kquant_oracle.sh writes: ggml-impl.h's
// GGML_FP32_TO_FP16, for --fp16-sweep.
uint16_t kquant_oracle_ggml_fp32_to_fp16(float f);
}

namespace {

using qat::kernels::KQuantRepresentation;
using qat::kernels::KQuantType;
constexpr int kN = qat::kernels::kKQuantBlockSize;

// ------------------------------------------------------------------------------------------
// Inputs: deterministic (splitmix64), the same for both sides.
// ------------------------------------------------------------------------------------------
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { // [0, 1)
    return static_cast<double>(next() >> 11) * 0x1.0p-53;
  }
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * uniform();
  }
  int integer(int lo, int hi) { // [lo, hi]
    return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
  double normal() {
    const double u = 1.0 - uniform();
    return std::sqrt(-2.0 * std::log(u)) *
        std::cos(6.283185307179586 * uniform());
  }
  double log_uniform(double lo, double hi) {
    return std::exp(uniform(std::log(lo), std::log(hi)));
  }
  double student_t(int dof) {
    double chi2 = 0.0;
    for (int i = 0; i < dof; ++i) {
      const double z = normal();
      chi2 += z * z;
    }
    return normal() / std::sqrt(chi2 / dof);
  }
};

struct Block {
  std::string kind;
  std::vector<float> x;
};

void add(std::vector<Block>& blocks, const char* kind, const float* x) {
  blocks.push_back({kind, std::vector<float>(x, x + kN)});
}

std::vector<Block> make_blocks(int scale) {
  std::vector<Block> blocks;
  Rng rng{20261203};
  float x[kN];
  auto fill = [&](auto&& f) {
    for (int i = 0; i < kN; ++i)
      x[i] = static_cast<float>(f(i));
  };
  // Normal, with sigma over 12 decades.
  for (int b = 0; b < 12000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-4, 1e4);
    const double mean = b % 4 == 0 ? rng.normal() * sigma : 0.0;
    fill([&](int) { return mean + sigma * rng.normal(); });
    add(blocks, "normal", x);
  }
  // Normal with a different sigma per sub-block of 16.
  for (int b = 0; b < 2000 * scale; ++b) {
    double sigma = 1.0;
    fill([&](int i) {
      if (i % 16 == 0)
        sigma = rng.log_uniform(1e-3, 1e1);
      return sigma * rng.normal();
    });
    add(blocks, "normal-mixed", x);
  }
  // Uniform: symmetric, all positive, all negative.
  for (int b = 0; b < 3000 * scale; ++b) {
    const double a = rng.log_uniform(1e-3, 1e3);
    const int shape = b % 3;
    fill([&](int) {
      return shape == 0 ? rng.uniform(-a, a)
                        : (shape == 1 ? rng.uniform(0, a) : rng.uniform(-a, 0));
    });
    add(blocks,
        shape == 0 ? "uniform" : (shape == 1 ? "positive" : "negative"),
        x);
  }
  // All negative: -|normal|, and all positive |normal| with an offset.
  for (int b = 0; b < 1000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-2, 1e2);
    fill([&](int) { return -std::fabs(sigma * rng.normal()); });
    add(blocks, "negative", x);
    const double offset = sigma * rng.uniform(0, 5);
    fill([&](int) { return offset + std::fabs(sigma * rng.normal()); });
    add(blocks, "positive", x);
  }
  // Heavy tails: Student-t with 1..4 degrees of freedom, and normal values with
  // a few outliers.
  for (int b = 0; b < 3000 * scale; ++b) {
    const int dof = 1 + b % 4;
    const double sigma = rng.log_uniform(1e-2, 1e2);
    fill([&](int) { return sigma * rng.student_t(dof); });
    add(blocks, "student-t", x);
  }
  for (int b = 0; b < 3000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-2, 1e2);
    fill([&](int) { return sigma * rng.normal(); });
    const int outliers = rng.integer(1, 4);
    for (int o = 0; o < outliers; ++o)
      x[rng.integer(0, kN - 1)] = static_cast<float>(
          sigma * rng.log_uniform(10, 3000) * (rng.next() & 1 ? 1 : -1));
    add(blocks, "outliers", x);
  }
  // Zeros: whole blocks (both signs of zero), and some sub-blocks zeroed.
  for (int b = 0; b < 16; ++b) {
    fill([&](int i) { return b % 2 ? 0.0 : (i % 3 ? -0.0 : 0.0); });
    add(blocks, "zero", x);
  }
  for (int b = 0; b < 2000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-2, 1e2);
    const int width = b % 2 ? 16 : 32;
    fill([&](int) { return sigma * rng.normal(); });
    for (int s = 0; s < kN / width; ++s)
      if (rng.next() % 3 == 0)
        for (int i = 0; i < width; ++i)
          x[s * width + i] = 0.0f;
    add(blocks, "zero-sub-blocks", x);
  }
  for (int b = 0; b < 1000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-2, 1e2);
    fill(
        [&](int) { return rng.next() % 10 == 0 ? sigma * rng.normal() : 0.0; });
    add(blocks, "sparse", x);
  }
  // Constants: whole blocks and per sub-block, every sign and magnitude.
  for (int b = 0; b < 600 * scale; ++b) {
    const double c = (b % 2 ? -1 : 1) * rng.log_uniform(1e-30, 1e30);
    fill([&](int) { return c; });
    add(blocks, "constant", x);
  }
  for (int b = 0; b < 1000 * scale; ++b) {
    double c = 0.0;
    const int width = b % 2 ? 16 : 32;
    fill([&](int i) {
      if (i % width == 0)
        c = (rng.next() & 1 ? -1 : 1) * rng.log_uniform(1e-3, 1e3);
      return c;
    });
    add(blocks, "constant-sub-blocks", x);
  }
  // Tiny values: d becomes an fp16 subnormal, or underflows to zero.
  for (int b = 0; b < 3000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-14, 1e-3);
    fill([&](int) { return sigma * rng.normal(); });
    add(blocks, "tiny", x);
  }
  for (int b = 0; b < 200 * scale; ++b) {
    const double sigma = rng.log_uniform(1e-44, 1e-30); // float subnormals
    fill([&](int) { return sigma * rng.normal(); });
    add(blocks, "subnormal", x);
  }
  // Huge values: d near the fp16 maximum (65504), or overflowing to inf.
  for (int b = 0; b < 3000 * scale; ++b) {
    const double sigma = rng.log_uniform(1e3, 1e9);
    fill([&](int) { return sigma * rng.normal(); });
    add(blocks, "huge", x);
  }
  for (int b = 0; b < 100 * scale; ++b) {
    const double sigma = rng.log_uniform(1e15, 1e37);
    fill([&](int) { return sigma * rng.normal(); });
    add(blocks, "enormous", x);
  }
  // Rounding ties: small integers on a power-of-two grid, so that x / d,
  // (x + dmin) / d and the search's scaled values often land on .5 exactly.
  static const int kRanges[] = {
      1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 127, 128};
  for (int b = 0; b < 8000 * scale; ++b) {
    const int k = kRanges[b % (sizeof kRanges / sizeof kRanges[0])];
    const double unit = std::ldexp(1.0, rng.integer(-12, 6));
    const int shape = (b / 17) % 4;
    fill([&](int) {
      const int v = shape == 0
          ? rng.integer(-k, k)
          : (shape == 1 ? rng.integer(0, k) : rng.integer(-k, 0));
      return shape == 3 ? (v + 0.5) * unit : v * unit;
    });
    add(blocks, "grid-ties", x);
  }
  // Two-valued sub-blocks and exact multiples of 1/63, 1/15, 1/31, 1/128.
  for (int b = 0; b < 2000 * scale; ++b) {
    const double unit = rng.log_uniform(1e-3, 1e3);
    const double lo = -unit * rng.integer(0, 3), hi = unit * rng.integer(1, 4);
    fill([&](int) { return rng.next() & 1 ? lo : hi; });
    add(blocks, "two-valued", x);
  }
  static const double kDenominators[] = {15, 31, 63, 127, 128, 30, 62};
  for (int b = 0; b < 2000 * scale; ++b) {
    const double den = kDenominators[b % 7];
    const double unit = std::ldexp(1.0, rng.integer(-8, 8));
    fill([&](int) { return unit * rng.integer(-64, 64) / den; });
    add(blocks, "fraction-ties", x);
  }
  // Random finite bit patterns of every exponent (nothing sane: the search's
  // sums overflow, nearest_int wraps); and a few NaN / inf elements.
  for (int b = 0; b < 500 * scale; ++b) {
    fill([&](int) {
      uint32_t u;
      do {
        u = static_cast<uint32_t>(rng.next());
      } while ((u & 0x7F800000u) == 0x7F800000u);
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    });
    add(blocks, "random-bits", x);
  }
  for (int b = 0; b < 300 * scale; ++b) {
    fill([&](int) { return rng.normal(); });
    const int which = b % 3;
    const float special =
        which == 0 ? NAN : (which == 1 ? INFINITY : -INFINITY);
    const int count = rng.integer(1, 3);
    for (int o = 0; o < count; ++o)
      x[rng.integer(0, kN - 1)] = special;
    add(blocks, which == 0 ? "nan" : "inf", x);
  }
  return blocks;
}

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------
const char* type_name(KQuantType t) {
  return t == KQuantType::q4_k ? "Q4_K"
                               : (t == KQuantType::q5_k ? "Q5_K" : "Q6_K");
}

void ggml_quantize(KQuantType t, const float* x, uint8_t* out) {
  if (t == KQuantType::q4_k)
    quantize_row_q4_K_ref(x, out, kN);
  else if (t == KQuantType::q5_k)
    quantize_row_q5_K_ref(x, out, kN);
  else
    quantize_row_q6_K_ref(x, out, kN);
}
void ggml_dequantize(KQuantType t, const uint8_t* in, float* out) {
  if (t == KQuantType::q4_k)
    dequantize_row_q4_K(in, out, kN);
  else if (t == KQuantType::q5_k)
    dequantize_row_q5_K(in, out, kN);
  else
    dequantize_row_q6_K(in, out, kN);
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Counts {
  long blocks = 0, byte_blocks = 0, dequant_blocks = 0, fake_blocks = 0,
       ties = 0;
};

// Values whose scaled value in the final pass is exactly k + 0.5 (a rounding
// tie), under the representation ggml stored.
long count_final_ties(KQuantType t, const uint8_t* block, const float* x) {
  KQuantRepresentation rep;
  uint8_t codes[kN];
  qat::kernels::kquant_unpack(t, block, rep, codes);
  const int size = qat::kernels::kquant_sub_block_size(t);
  long ties = 0;
  for (int i = 0; i < kN; ++i) {
    const int s = i / size;
    float scaled;
    if (t == KQuantType::q6_k) {
      const float d =
          qat::kernels::half_bits_to_float(rep.d_bits) * rep.scales[s];
      if (d == 0.0f)
        continue;
      scaled = x[i] / d;
    } else {
      const float d = qat::kernels::half_bits_to_float(rep.d_bits) *
          static_cast<float>(static_cast<uint8_t>(rep.scales[s]));
      if (d == 0.0f)
        continue;
      const float m =
          qat::kernels::half_bits_to_float(rep.dmin_bits) * rep.mins[s];
      scaled = (x[i] + m) / d;
    }
    if (std::isfinite(scaled) && scaled - std::floor(scaled) == 0.5f)
      ++ties;
  }
  return ties;
}

struct Options {
  std::string label = "ggml";
  int scale = 1;
  bool fp16_sweep = false;
  int max_print = 8;
  bool report_only = false;
};

long run_type(
    KQuantType t,
    const std::vector<Block>& blocks,
    const Options& opt) {
  const int64_t bytes = qat::kernels::kquant_block_bytes(t);
  std::vector<uint8_t> ours(bytes), theirs(bytes);
  std::vector<float> deq_ours(kN), deq_theirs(kN), fake(kN);
  std::vector<uint8_t> mask(kN);
  std::vector<std::string> kinds;
  std::vector<Counts> per_kind;
  long printed = 0, total_bad = 0;
  for (size_t b = 0; b < blocks.size(); ++b) {
    const Block& blk = blocks[b];
    size_t k = 0;
    while (k < kinds.size() && kinds[k] != blk.kind)
      ++k;
    if (k == kinds.size()) {
      kinds.push_back(blk.kind);
      per_kind.emplace_back();
    }
    Counts& c = per_kind[k];
    ++c.blocks;
    const float* x = blk.x.data();
    qat::kernels::quantize_kquant_ref(x, kN, t, ours.data());
    ggml_quantize(t, x, theirs.data());
    c.ties += count_final_ties(t, theirs.data(), x);
    // 1. bytes
    const bool bytes_ok = std::memcmp(ours.data(), theirs.data(), bytes) == 0;
    // 2. dequantize the same (ggml's) bytes on both sides
    qat::kernels::dequantize_kquant_ref(theirs.data(), kN, t, deq_ours.data());
    ggml_dequantize(t, theirs.data(), deq_theirs.data());
    int deq_bad = 0;
    for (int i = 0; i < kN; ++i)
      deq_bad += bits(deq_ours[i]) != bits(deq_theirs[i]);
    // 3. fake-quant = ggml's dequantize(quantize(x)), except at NaN inputs
    qat::kernels::fake_quant_kquant_ref(x, fake.data(), mask.data(), t, 0, 1);
    int fake_bad = 0;
    for (int i = 0; i < kN; ++i)
      fake_bad += x[i] == x[i] && bits(fake[i]) != bits(deq_theirs[i]);
    c.byte_blocks += !bytes_ok;
    c.dequant_blocks += deq_bad != 0;
    c.fake_blocks += fake_bad != 0;
    if ((!bytes_ok || deq_bad || fake_bad) && printed < opt.max_print) {
      ++printed;
      int first = 0;
      while (first < bytes && ours[first] == theirs[first])
        ++first;
      std::printf(
          "  MISMATCH %s block %zu (%s): bytes %s",
          type_name(t),
          b,
          blk.kind.c_str(),
          bytes_ok ? "equal" : "differ");
      if (!bytes_ok)
        std::printf(
            " from offset %d (ours %02x, ggml %02x)",
            first,
            ours[first],
            theirs[first]);
      std::printf(
          ", dequantize %d values differ, fake-quant %d values differ\n",
          deq_bad,
          fake_bad);
      for (int i = 0, shown = 0; i < kN && shown < 2; ++i)
        if (bits(deq_ours[i]) != bits(deq_theirs[i]) ||
            bits(fake[i]) != bits(deq_theirs[i])) {
          std::printf(
              "    x[%d] = %.9g: ggml %.9g, our dequantize %.9g, our fake-quant %.9g\n",
              i,
              static_cast<double>(x[i]),
              static_cast<double>(deq_theirs[i]),
              static_cast<double>(deq_ours[i]),
              static_cast<double>(fake[i]));
          ++shown;
        }
    }
  }
  // 4. arbitrary bytes: unpack + dequantize vs ggml, and pack(unpack) == bytes
  Rng rng{7};
  long random_blocks = 2000L * opt.scale, random_deq_bad = 0, repack_bad = 0;
  std::vector<uint8_t> raw(bytes), repacked(bytes);
  std::vector<uint8_t> codes(kN);
  for (long r = 0; r < random_blocks; ++r) {
    for (auto& v : raw)
      v = static_cast<uint8_t>(rng.next());
    if (r % 2) { // keep the halves finite in half of them
      auto finite = [&](int at) { raw[at + 1] &= 0xBB; };
      if (t == KQuantType::q6_k)
        finite(208);
      else {
        finite(0);
        finite(2);
      }
    }
    qat::kernels::dequantize_kquant_ref(raw.data(), kN, t, deq_ours.data());
    ggml_dequantize(t, raw.data(), deq_theirs.data());
    bool bad = false;
    for (int i = 0; i < kN; ++i)
      bad |= bits(deq_ours[i]) != bits(deq_theirs[i]);
    random_deq_bad += bad;
    KQuantRepresentation rep;
    qat::kernels::kquant_unpack(t, raw.data(), rep, codes.data());
    qat::kernels::kquant_pack(t, rep, codes.data(), repacked.data());
    repack_bad += std::memcmp(raw.data(), repacked.data(), bytes) != 0;
  }
  std::printf("%s vs %s\n", type_name(t), opt.label.c_str());
  std::printf(
      "  %-20s %8s %8s %8s %8s %8s\n",
      "inputs",
      "blocks",
      "bytes!=",
      "deq!=",
      "fake!=",
      "ties");
  Counts all;
  for (size_t k = 0; k < kinds.size(); ++k) {
    const Counts& c = per_kind[k];
    std::printf(
        "  %-20s %8ld %8ld %8ld %8ld %8ld\n",
        kinds[k].c_str(),
        c.blocks,
        c.byte_blocks,
        c.dequant_blocks,
        c.fake_blocks,
        c.ties);
    all.blocks += c.blocks;
    all.byte_blocks += c.byte_blocks;
    all.dequant_blocks += c.dequant_blocks;
    all.fake_blocks += c.fake_blocks;
    all.ties += c.ties;
  }
  std::printf(
      "  %-20s %8ld %8ld %8ld %8ld %8ld\n",
      "TOTAL",
      all.blocks,
      all.byte_blocks,
      all.dequant_blocks,
      all.fake_blocks,
      all.ties);
  std::printf(
      "  %-20s %8ld %8s %8ld  (pack(unpack(bytes)) != bytes: %ld)\n",
      "random bytes",
      random_blocks,
      "",
      random_deq_bad,
      repack_bad);
  total_bad = all.byte_blocks + all.dequant_blocks + all.fake_blocks +
      random_deq_bad + repack_bad;
  return total_bad;
}

long fp16_sweep() {
  long bad = 0;
  uint32_t u = 0;
  do {
    float f;
    std::memcpy(&f, &u, 4);
    const uint16_t ours = qat::kernels::half_bits_from_float(f);
    const uint16_t theirs = kquant_oracle_ggml_fp32_to_fp16(f);
    if (ours != theirs && bad++ < 4)
      std::printf(
          "  fp16 MISMATCH %08x: ours %04x ggml %04x\n", u, ours, theirs);
  } while (++u != 0);
  std::printf(
      "fp32 -> fp16 over all 2^32 float bit patterns: %ld mismatches\n", bad);
  return bad;
}

} // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--label" && i + 1 < argc)
      opt.label = argv[++i];
    else if (a == "--blocks-scale" && i + 1 < argc)
      opt.scale = std::atoi(argv[++i]);
    else if (a == "--max-print" && i + 1 < argc)
      opt.max_print = std::atoi(argv[++i]);
    else if (a == "--fp16-sweep")
      opt.fp16_sweep = true;
    else if (a == "--report-only")
      opt.report_only = true;
    else {
      std::fprintf(
          stderr,
          "usage: %s [--label TEXT] [--blocks-scale N] [--max-print N] "
          "[--fp16-sweep] [--report-only]\n",
          argv[0]);
      return 2;
    }
  }
  const std::vector<Block> blocks = make_blocks(opt.scale < 1 ? 1 : opt.scale);
  long bad = 0;
  if (opt.fp16_sweep)
    bad += fp16_sweep();
  for (KQuantType t : {KQuantType::q4_k, KQuantType::q5_k, KQuantType::q6_k})
    bad += run_type(t, blocks, opt);
  std::printf(
      "%s: %s (%ld mismatching blocks in all)\n",
      opt.label.c_str(),
      bad ? "MISMATCH" : "all equal",
      bad);
  return bad && !opt.report_only ? 1 : 0;
}
