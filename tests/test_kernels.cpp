// Torch-free kernel tests: the fast kernels against the reference kernels (bit
// for bit), on odd sizes and on the values where rounding and clamping are
// decided, and the scalar formulas against the C library. The ATen comparisons
// live in test_ops.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kernels/quant_math.h"
#include "kernels/ref/block_fast.h"
#include "kernels/ref/fake_quant_ref.h"
#include "kernels/ref/gguf_kquant_ref.h"
#include "kernels/ref/qmatmul_ref.h"

namespace qat::kernels {
namespace {

constexpr int64_t kOddSizes[] = {1, 3, 7, 17, 33, 1023};

uint32_t bits_of(float x) {
  return float_bits(x);
}

// Values that decide rounding and clamping: ties, code-range edges, huge,
// denormal, inf, NaN, then seeded random normals of a few magnitudes.
std::vector<float> hard_values(int64_t n, float scale, uint32_t seed) {
  std::vector<float> v;
  for (int k = -140; k <= 140; ++k)
    v.push_back((static_cast<float>(k) + 0.5f) * scale);
  const float specials[] = {
      0.0f,
      -0.0f,
      1e30f,
      -1e30f,
      1e-40f,
      -1e-40f,
      std::numeric_limits<float>::denorm_min(),
      std::numeric_limits<float>::infinity(),
      -std::numeric_limits<float>::infinity(),
      std::numeric_limits<float>::quiet_NaN(),
      3.4e38f,
      -3.4e38f};
  v.insert(v.end(), std::begin(specials), std::end(specials));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float magnitudes[] = {scale, 30.0f * scale, 300.0f * scale};
  while (static_cast<int64_t>(v.size()) < n) {
    v.push_back(normal(rng) * magnitudes[v.size() % 3]);
  }
  v.resize(n);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

template <typename T>
std::vector<T> convert(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = from_float<T>(v[i]);
  return out;
}

template <typename T>
uint32_t raw(const T& x) {
  if constexpr (std::is_same_v<T, float>) {
    return bits_of(x);
  } else {
    return x.bits;
  }
}

// The layouts of every granularity for a [outer, channels, inner] tensor.
std::vector<RowLayout> layouts_for(
    int64_t outer,
    int64_t channels,
    int64_t inner) {
  const int64_t numel = outer * channels * inner;
  return {
      {1, numel, 1},                       // per tensor, one row
      {outer * channels, inner, channels}, // per channel along the middle axis
      {numel / inner, inner, numel / inner}, // per group of `inner` (last axis)
  };
}

struct Params {
  std::vector<float> scale;
  std::vector<int32_t> zero_point;
};

Params random_params(int64_t count, int32_t qmin, int32_t qmax, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> log_scale(-6.0f, 1.0f);
  std::uniform_int_distribution<int32_t> zp(qmin, qmax);
  Params p;
  for (int64_t i = 0; i < count; ++i) {
    p.scale.push_back(std::exp2(log_scale(rng)));
    p.zero_point.push_back(zp(rng));
  }
  return p;
}

// Runs body once for every instruction set the fast kernels were built for and
// the CPU runs.
void for_each_isa(const std::function<void()>& body) {
  const CpuIsa saved = active_cpu_isa();
  for (CpuIsa isa : {CpuIsa::baseline, CpuIsa::avx2, CpuIsa::avx512}) {
    if (!cpu_supports(isa))
      continue;
    SCOPED_TRACE(cpu_isa_name(isa));
    set_cpu_isa(isa);
    body();
  }
  set_cpu_isa(saved);
}

template <typename T>
class KernelTest : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, BFloat16>;
TYPED_TEST_SUITE(KernelTest, ElementTypes);

TEST(QuantMath, RoundHalfEvenMatchesNearbyint) {
  for (int k = -100000; k <= 100000; ++k) {
    const float tie = static_cast<float>(k) + 0.5f;
    ASSERT_EQ(bits_of(round_half_even(tie)), bits_of(std::nearbyint(tie)))
        << tie;
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    const float x = bits_float(static_cast<uint32_t>(rng()));
    if (std::isnan(x))
      continue;
    ASSERT_EQ(bits_of(round_half_even(x)), bits_of(std::nearbyint(x))) << x;
  }
  const float edges[] = {
      8388607.5f, 8388608.0f, -8388607.5f, 4194303.5f, 0.49999997f, -0.5f};
  for (float x : edges)
    EXPECT_EQ(bits_of(round_half_even(x)), bits_of(std::nearbyint(x))) << x;
}

// round_code: the same value as nearbyint up to 2^22 (the sign of a zero aside,
// which no fake-quant result can see), and a value beyond every code range
// above it.
TEST(QuantMath, RoundCodeMatchesNearbyintInsideItsRange) {
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> wide(-4194304.0f, 4194304.0f);
  std::uniform_real_distribution<float> narrow(-300.0f, 300.0f);
  for (int i = 0; i < 1000000; ++i) {
    const float y = i % 2 ? wide(rng) : narrow(rng);
    ASSERT_EQ(round_code(y), std::nearbyint(y)) << y;
    const float tie = std::floor(y) + 0.5f;
    ASSERT_EQ(round_code(tie), std::nearbyint(tie)) << tie;
  }
  EXPECT_EQ(round_code(1e30f), 4194304.0f);
  EXPECT_EQ(round_code(-std::numeric_limits<float>::infinity()), -4194304.0f);
  EXPECT_TRUE(std::isnan(round_code(std::numeric_limits<float>::quiet_NaN())));
}

TEST(QuantMath, AffineFormulaSpecialValues) {
  const float s = 0.5f, inv = 1.0f / s;
  // Ties round to even: 0.75 / 0.5 = 1.5 -> 2; 1.25 / 0.5 = 2.5 -> 2.
  EXPECT_EQ(fake_quant_affine(0.75f, s, inv, 0, -8, 7).value, 1.0f);
  EXPECT_EQ(fake_quant_affine(1.25f, s, inv, 0, -8, 7).value, 1.0f);
  const auto above = fake_quant_affine(100.0f, s, inv, 0, -8, 7);
  EXPECT_EQ(above.value, 3.5f);
  EXPECT_FALSE(above.in_range);
  const auto at_max = fake_quant_affine(3.5f, s, inv, 0, -8, 7);
  EXPECT_TRUE(at_max.in_range);
  const auto inf = fake_quant_affine(
      -std::numeric_limits<float>::infinity(), s, inv, 1, -8, 7);
  EXPECT_EQ(inf.value, -4.5f);
  EXPECT_FALSE(inf.in_range);
  const auto nan = fake_quant_affine(
      std::numeric_limits<float>::quiet_NaN(), s, inv, 0, -8, 7);
  EXPECT_TRUE(std::isnan(nan.value));
  EXPECT_FALSE(nan.in_range);
}

TEST(QuantMath, BFloat16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the
  // even one, 1.
  EXPECT_EQ(bf16_bits_from_float(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(bf16_bits_from_float(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(
      bf16_bits_from_float(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(to_float(BFloat16{0x3F80}), 1.0f);
}

TEST(QuantMath, Fp8CodesRoundTrip) {
  for (int code = 0; code < 256; ++code) {
    const auto c = static_cast<uint8_t>(code);
    const float e4 = fp8_decode<Fp8Format::e4m3fn>(c);
    if (std::isnan(e4)) {
      EXPECT_EQ(c & 0x7F, 0x7F);
    } else {
      EXPECT_EQ(fp8_encode<Fp8Format::e4m3fn>(e4), c) << code;
    }
    const float e5 = fp8_decode<Fp8Format::e5m2>(c);
    if (std::isnan(e5)) {
      EXPECT_GT(c & 0x7F, 0x7C);
    } else if (std::isinf(e5)) {
      EXPECT_EQ(c & 0x7F, 0x7C); // inf saturates to the largest finite code
      EXPECT_EQ(fp8_encode<Fp8Format::e5m2>(e5), (c & 0x80) | 0x7B);
    } else {
      EXPECT_EQ(fp8_encode<Fp8Format::e5m2>(e5), c) << code;
    }
  }
  EXPECT_EQ(fp8_decode<Fp8Format::e4m3fn>(0x7E), 448.0f);
  EXPECT_EQ(fp8_decode<Fp8Format::e4m3fn>(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_decode<Fp8Format::e5m2>(0x7B), 57344.0f);
  EXPECT_EQ(fp8_decode<Fp8Format::e5m2>(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(fp8_encode<Fp8Format::e4m3fn>(1000.0f), 0x7E); // saturates
  EXPECT_EQ(fp8_encode<Fp8Format::e4m3fn>(-1000.0f), 0xFE);
}

TYPED_TEST(KernelTest, AffineFastMatchesReferenceBitForBit) {
  using T = TypeParam;
  for_each_isa([&] {
    const std::pair<int32_t, int32_t> ranges[] = {
        {-128, 127}, {0, 255}, {-8, 7}, {0, 15}, {-2, 1}};
    uint32_t seed = 1;
    for (int64_t channels : kOddSizes) {
      for (int64_t inner : {int64_t{1}, int64_t{3}, int64_t{33}}) {
        for (const RowLayout& layout : layouts_for(2, channels, inner)) {
          for (auto [qmin, qmax] : ranges) {
            const auto x =
                convert<T>(hard_values(layout.numel(), 0.05f, seed++));
            const Params p =
                random_params(layout.param_period, qmin, qmax, seed++);
            const AffineParams params{
                p.scale.data(), p.zero_point.data(), qmin, qmax};
            std::vector<T> y_ref(x.size()), y_fast(x.size());
            std::vector<uint8_t> m_ref(x.size()), m_fast(x.size());
            fake_quant_affine_ref(
                x.data(),
                y_ref.data(),
                m_ref.data(),
                layout,
                params,
                0,
                layout.rows);
            // The fast kernel in two row ranges, as the op layer's threads
            // would call it.
            const int64_t half = layout.rows / 2;
            fake_quant_affine_fast(
                x.data(),
                y_fast.data(),
                m_fast.data(),
                layout,
                params,
                0,
                half);
            fake_quant_affine_fast(
                x.data(),
                y_fast.data(),
                m_fast.data(),
                layout,
                params,
                half,
                layout.rows);
            for (size_t i = 0; i < x.size(); ++i) {
              ASSERT_EQ(raw(y_ref[i]), raw(y_fast[i]))
                  << "element " << i << " of " << x.size();
              ASSERT_EQ(m_ref[i], m_fast[i]) << "element " << i;
            }
            std::vector<T> y_nomask(x.size());
            fake_quant_affine_fast(
                x.data(),
                y_nomask.data(),
                nullptr,
                layout,
                params,
                0,
                layout.rows);
            for (size_t i = 0; i < x.size(); ++i)
              ASSERT_EQ(raw(y_ref[i]), raw(y_nomask[i]));
          }
        }
      }
    }
  });
}

TYPED_TEST(KernelTest, Fp8FastMatchesReferenceBitForBit) {
  using T = TypeParam;
  for_each_isa([&] {
    uint32_t seed = 100;
    for (int64_t channels : kOddSizes) {
      for (const RowLayout& layout : layouts_for(3, channels, 5)) {
        for (Fp8Format format : {Fp8Format::e4m3fn, Fp8Format::e5m2}) {
          const auto x = convert<T>(hard_values(layout.numel(), 2.0f, seed++));
          const Params p = random_params(layout.param_period, 0, 0, seed++);
          std::vector<T> y_ref(x.size()), y_fast(x.size());
          std::vector<uint8_t> m_ref(x.size()), m_fast(x.size());
          fake_quant_fp8_ref(
              x.data(),
              y_ref.data(),
              m_ref.data(),
              layout,
              p.scale.data(),
              format,
              0,
              layout.rows);
          fake_quant_fp8_fast(
              x.data(),
              y_fast.data(),
              m_fast.data(),
              layout,
              p.scale.data(),
              format,
              0,
              layout.rows);
          for (size_t i = 0; i < x.size(); ++i) {
            ASSERT_EQ(raw(y_ref[i]), raw(y_fast[i])) << "element " << i;
            ASSERT_EQ(m_ref[i], m_fast[i]) << "element " << i;
          }
        }
      }
    }
  });
}

TYPED_TEST(KernelTest, MaskBackwardFastMatchesReference) {
  using T = TypeParam;
  for_each_isa([&] {
    for (int64_t n : kOddSizes) {
      const auto dy =
          convert<T>(hard_values(n, 1.0f, static_cast<uint32_t>(n)));
      std::vector<uint8_t> mask(n);
      for (int64_t i = 0; i < n; ++i)
        mask[i] = (i * 7) % 3 != 0;
      std::vector<T> ref(n), fast(n);
      mask_backward_ref(dy.data(), mask.data(), ref.data(), 0, n);
      mask_backward_fast(dy.data(), mask.data(), fast.data(), 0, n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(raw(ref[i]), raw(fast[i])) << i;
    }
  });
}

TYPED_TEST(KernelTest, LsqBackwardFastMatchesReferenceBitForBit) {
  using T = TypeParam;
  for_each_isa([&] {
    uint32_t seed = 500;
    for (int64_t channels : kOddSizes) {
      for (const RowLayout& layout : layouts_for(2, channels, 300)) {
        const auto x = convert<T>(hard_values(layout.numel(), 0.05f, seed++));
        const auto dy = convert<T>(hard_values(layout.numel(), 1.0f, seed++));
        const Params p = random_params(layout.param_period, -8, 7, seed++);
        const AffineParams params{p.scale.data(), p.zero_point.data(), -8, 7};
        std::vector<T> dx_ref(x.size()), dx_fast(x.size());
        std::vector<double> s_ref(layout.rows), z_ref(layout.rows),
            s_fast(layout.rows), z_fast(layout.rows);
        lsq_backward_ref(
            x.data(),
            dy.data(),
            dx_ref.data(),
            s_ref.data(),
            z_ref.data(),
            layout,
            params,
            0.1f,
            0,
            layout.rows);
        lsq_backward_fast(
            x.data(),
            dy.data(),
            dx_fast.data(),
            s_fast.data(),
            z_fast.data(),
            layout,
            params,
            0.1f,
            0,
            layout.rows);
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_EQ(raw(dx_ref[i]), raw(dx_fast[i])) << i;
        for (int64_t r = 0; r < layout.rows; ++r) {
          // NaN and inf inputs make some sums non-finite; equal bits cover
          // those too.
          ASSERT_EQ(std::memcmp(&s_ref[r], &s_fast[r], sizeof(double)), 0)
              << "row " << r;
          ASSERT_EQ(std::memcmp(&z_ref[r], &z_fast[r], sizeof(double)), 0)
              << "row " << r;
        }
      }
    }
  });
}

// The simulated matmuls' row codes are the fake-quant kernels' codes: code *
// row scale is the fake-quantized value bit for bit, the masks are the same,
// and a dynamic row's scale is amax / 127 (int8) or amax / 448 (e4m3fn), at
// least FLT_EPSILON.
TYPED_TEST(KernelTest, RowCodesAreTheFakeQuantCodes) {
  using T = TypeParam;
  uint32_t seed = 11;
  for (int64_t cols : kOddSizes) {
    const int64_t rows = 5;
    const RowLayout layout{rows, cols, rows};
    auto x = convert<T>(hard_values(rows * cols, 0.05f, seed++));
    for (int64_t c = 0; c < cols; ++c) // row 4 is all zeros: scale FLT_EPSILON
      x[4 * cols + c] = from_float<T>(0.0f);
    std::vector<float> scale(rows);
    std::vector<uint8_t> mask(x.size()), m_ref(x.size());
    std::vector<T> y_ref(x.size());
    {
      std::vector<int8_t> codes(x.size());
      quantize_rows_ref<MatmulFormat::int8, T>(
          x.data(),
          cols,
          {},
          {codes.data(), scale.data(), mask.data()},
          0,
          rows);
      const std::vector<int32_t> zero_points(rows, 0);
      fake_quant_affine_ref(
          x.data(),
          y_ref.data(),
          m_ref.data(),
          layout,
          {scale.data(), zero_points.data(), -128, 127},
          0,
          rows);
      for (int64_t r = 0; r < rows; ++r) {
        float amax = 0.0f;
        bool nan = false;
        for (int64_t c = 0; c < cols; ++c) {
          const float v = to_float(x[r * cols + c]);
          nan |= std::isnan(v);
          amax = std::max(amax, std::fabs(v));
        }
        if (nan) { // as ATen's aminmax and clamp: NaN in, NaN scale out
          ASSERT_TRUE(std::isnan(scale[r])) << "row " << r;
          continue;
        }
        const float expected =
            std::max(amax / 127.0f, std::numeric_limits<float>::epsilon());
        ASSERT_EQ(bits_of(scale[r]), bits_of(expected)) << "row " << r;
      }
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_EQ(mask[i], m_ref[i]) << i;
        const float y = to_float(y_ref[i]);
        if (!std::isnan(y)) {
          const float value = static_cast<float>(codes[i]) * scale[i / cols];
          ASSERT_EQ(raw(from_float<T>(value)), raw(y_ref[i])) << i;
        }
      }
    }
    {
      std::vector<uint8_t> codes(x.size());
      quantize_rows_ref<MatmulFormat::e4m3fn, T>(
          x.data(),
          cols,
          {},
          {codes.data(), scale.data(), mask.data()},
          0,
          rows);
      fake_quant_fp8_ref(
          x.data(),
          y_ref.data(),
          m_ref.data(),
          layout,
          scale.data(),
          Fp8Format::e4m3fn,
          0,
          rows);
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_EQ(mask[i], m_ref[i]) << i;
        const float y = to_float(y_ref[i]);
        if (!std::isnan(y)) {
          const float value =
              fp8_decode<Fp8Format::e4m3fn>(codes[i]) * scale[i / cols];
          ASSERT_EQ(raw(from_float<T>(value)), raw(y_ref[i])) << i;
        }
      }
    }
  }
}

// Given scales: one per row, or one for all (stride 0).
TEST(QMatmulRef, GivenScalesAreUsedAsGiven) {
  const std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.26f, 100.0f, -0.5f};
  const float per_row[] = {0.5f, 0.25f};
  std::vector<int8_t> codes(6);
  std::vector<float> scale(2);
  std::vector<uint8_t> mask(6);
  quantize_rows_ref<MatmulFormat::int8, float>(
      x.data(),
      3,
      {per_row, 1},
      {codes.data(), scale.data(), mask.data()},
      0,
      2);
  EXPECT_EQ(codes, (std::vector<int8_t>{2, -4, 6, 1, 127, -2}));
  EXPECT_EQ(mask, (std::vector<uint8_t>{1, 1, 1, 1, 0, 1}));
  EXPECT_EQ(scale, (std::vector<float>{0.5f, 0.25f}));
  quantize_rows_ref<MatmulFormat::int8, float>(
      x.data(), 3, {per_row, 0}, {codes.data(), scale.data(), nullptr}, 0, 2);
  EXPECT_EQ(codes, (std::vector<int8_t>{2, -4, 6, 1, 127, -1}));
  EXPECT_EQ(scale, (std::vector<float>{0.5f, 0.5f}));
}

// int8 sums against a 64-bit count on alignment-edge shapes; the epilogue's
// arithmetic order.
TEST(QMatmulRef, Int8SumsAreExactAndDequantized) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code(-128, 127);
  for (int64_t m : {1, 7, 33}) {
    for (int64_t k : {1, 16, 129}) {
      for (int64_t n : {7, 64}) {
        std::vector<int8_t> a(m * k), b(n * k);
        for (auto& v : a)
          v = static_cast<int8_t>(code(rng));
        for (auto& v : b)
          v = static_cast<int8_t>(code(rng));
        std::vector<int32_t> acc(m * n);
        matmul_codes_ref<MatmulFormat::int8>(
            a.data(), b.data(), acc.data(), n, k, 0, m);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            int64_t sum = 0;
            for (int64_t l = 0; l < k; ++l)
              sum += int64_t{a[i * k + l]} * b[j * k + l];
            ASSERT_EQ(acc[i * n + j], sum) << m << "x" << k << "x" << n;
          }
        }
      }
    }
  }
  const int32_t acc[] = {3, -5};
  const float a_scale[] = {0.1f}, b_scale[] = {0.3f, 0.7f},
              bias[] = {1.0f, 2.0f};
  float out[2];
  dequantize_ref<int32_t, float>(
      acc, 2, {a_scale, b_scale, bias}, out, 2, 0, 1);
  EXPECT_EQ(bits_of(out[0]), bits_of(3.0f * (0.1f * 0.3f) + 1.0f));
  EXPECT_EQ(bits_of(out[1]), bits_of(-5.0f * (0.1f * 0.7f) + 2.0f));
}

// ---------------------------------------------------------------------------------------------
// Block formats: the fast NVFP4 / MX and GGUF kernels against the reference
// ---------------------------------------------------------------------------------------------

constexpr float kInf = std::numeric_limits<float>::infinity();

// NaNs of both signs, quiet and signalling, with payloads.
const uint32_t kNaNBits[] = {
    0x7FC00000u,
    0xFFC00000u,
    0x7F800001u,
    0xFFFFFFFFu,
    0x7FC12345u,
    0xFF812345u};

float random_nan(std::mt19937& rng) {
  return bits_float(kNaNBits[rng() % std::size(kNaNBits)]);
}

// n values (a multiple of `block`) made of blocks of one kind each: random
// normals of any magnitude, zeros of both signs, NaN and infinity among
// values, subnormals, values near FLT_MAX and 2^128, any bit pattern, the
// rounding thresholds of e2m1 and e4m3fn and the GGUF code ties (k + 1/2
// times a power of two, with the block maximum making that power the scale),
// a largest magnitude held by v and -v, constant blocks.
std::vector<float> block_values(int64_t n, int block, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-30, 30);
  const auto pick = [&](auto const& list) {
    return list[rng() % std::size(list)];
  };
  const float e2m1_thresholds[] = {
      0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 0.5f, 1.0f, 4.0f};
  std::vector<float> v(n);
  constexpr int kKinds = 16;
  for (int64_t at = 0; at < n; at += block) {
    float* b = v.data() + at;
    const int kind = static_cast<int>(rng() % kKinds);
    const float p = std::ldexp(1.0f, exponent(rng));
    const auto sign = [&] { return rng() % 2 ? -1.0f : 1.0f; };
    const float kind_sign = sign();
    const uint32_t p_bits = static_cast<uint32_t>(rng());
    // For kind 12: a float on a tie or an edge of IEEE half rounding (GGUF
    // stores its block scales as halves): halfway between two normal or two
    // subnormal halves, around 65520 (the first float that rounds to inf) and
    // 2^-14 (the smallest normal).
    float half_edge;
    {
      const float edges[] = {
          65504.0f,
          65519.996f,
          65520.0f,
          65536.0f,
          std::ldexp(1.0f, -25),
          std::ldexp(3.0f, -25),
          std::ldexp(1.0f, -24),
          std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25),
          std::ldexp(1.0f, -14),
          std::ldexp(1.0f, -14) + std::ldexp(1.0f, -25)};
      const int k = static_cast<int>(rng() % 4);
      const int e = static_cast<int>(rng() % 40) - 24;
      half_edge = rng() % 3 == 0
          ? pick(edges)
          : std::ldexp(1.0f + static_cast<float>(2 * k + 1) / 2048.0f, e);
    }
    for (int i = 0; i < block; ++i) {
      switch (kind) {
        case 0: // all zero
          b[i] = 0.0f;
          break;
        case 1: // zeros of both signs
          b[i] = sign() * 0.0f;
          break;
        case 2: // subnormals and zeros
          b[i] = bits_float(
              (rng() % 2 ? 0x80000000u : 0u) |
              (rng() % 4 ? static_cast<uint32_t>(rng() & 0x7FFFFFu) : 0u));
          break;
        case 3: // near the largest floats and inf
          b[i] = sign() *
              (rng() % 3 ? bits_float(0x7F000000u + (rng() & 0x7FFFFFu))
                         : 3.4028235e38f);
          break;
        case 4: // any bit pattern
          b[i] = bits_float(static_cast<uint32_t>(rng()));
          break;
        case 5: // e2m1 thresholds times a power of two, and neighbours
        {
          float t = pick(e2m1_thresholds) * p;
          const int ulps = static_cast<int>(rng() % 5) - 2;
          t = bits_float(float_bits(t) + ulps);
          b[i] = sign() * t;
          break;
        }
        case 6: // e4m3fn midpoints (code + 1/2 units) times a power of two
        {
          const float lo =
              fp8_decode<Fp8Format::e4m3fn>(static_cast<uint8_t>(rng() % 126));
          const float hi = fp8_decode<Fp8Format::e4m3fn>(
              static_cast<uint8_t>(float_bits(lo) == 0 ? 1 : 0) +
              fp8_encode<Fp8Format::e4m3fn>(lo));
          const float mid = (lo + hi) * 0.5f;
          const int ulps = static_cast<int>(rng() % 3) - 1;
          b[i] = sign() * bits_float(float_bits(mid * p) + ulps);
          break;
        }
        case 7: // GGUF ties: (k + 1/2) p, the maximum 127 p or -8 p
          b[i] =
              (static_cast<float>(static_cast<int>(rng() % 33) - 16) + 0.5f) *
              p;
          if (i == 3)
            b[i] = rng() % 2 ? 127.0f * p : -8.0f * p;
          if (i == 9 && rng() % 2)
            b[i] = 8.0f * p;
          break;
        case 8: // the largest magnitude twice, with both signs
          b[i] = normal(rng) * p;
          if (i == block / 3 || i == block / 2)
            b[i] = sign() * 100.0f * p;
          break;
        case 9: // one value in a block of zeros
          b[i] = i == block / 2 ? normal(rng) * p : sign() * 0.0f;
          break;
        case 10: // constant
          b[i] = i == 0 ? normal(rng) * p : b[0];
          break;
        case 11: // NaN and inf only: all NaN, all inf of one sign (kind_sign),
                 // both infinities, or one infinity among NaNs
        {
          const int mode = static_cast<int>(p_bits % 4);
          b[i] = mode == 0 ? random_nan(rng)
              : mode == 1  ? kind_sign * kInf
              : mode == 2  ? sign() * kInf
                           : (rng() % 2 ? random_nan(rng) : kind_sign * kInf);
          break;
        }
        case 12: // a block scale d = half_edge: Q4_0's largest value -8 d,
                 // Q8_0's magnitude 127 d, Q5_1's minimum 0 and maximum 31 d
        {
          const int mode = static_cast<int>(p_bits % 3);
          const float top = mode == 0 ? 8.0f * kind_sign
              : mode == 1             ? 127.0f * kind_sign
                                      : 31.0f;
          b[i] = i == 0 ? top * half_edge
              : mode == 2 && i == 1
              ? 0.0f
              : static_cast<float>(mode == 2 ? i % 7 : i % 15 - 7) * half_edge;
          break;
        }
        default: // normals of one magnitude, now and then a special
          b[i] = normal(rng) * p;
          if (rng() % 13 == 0) {
            const float specials[] = {
                kInf,
                -kInf,
                random_nan(rng),
                std::numeric_limits<float>::denorm_min(),
                -0.0f,
                3.4e38f,
                1.75f * 1.7014118e38f};
            b[i] = pick(specials);
          }
          break;
      }
    }
  }
  return v;
}

// bfloat16 copies that keep a variety of NaNs (from_float makes every NaN
// 0x7FC0).
std::vector<BFloat16> to_bf16(const std::vector<float>& v, uint32_t seed) {
  std::mt19937 rng(seed);
  const uint16_t nans[] = {0x7FC0, 0xFFC0, 0x7F81, 0xFFFF};
  std::vector<BFloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = from_float<BFloat16>(v[i]);
    if (v[i] != v[i])
      out[i].bits = nans[rng() % 4];
  }
  return out;
}

template <typename T>
void expect_same(
    const std::vector<T>& ref,
    const std::vector<T>& fast,
    const std::vector<T>& x,
    const char* what) {
  ASSERT_EQ(ref.size(), fast.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(raw(ref[i]), raw(fast[i]))
        << what << " element " << i << " of " << ref.size() << ", x bits "
        << std::hex << raw(x[i]);
  }
}

void expect_same_bytes(
    const std::vector<uint8_t>& ref,
    const std::vector<uint8_t>& fast,
    const char* what) {
  ASSERT_EQ(ref.size(), fast.size());
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_EQ(int{ref[i]}, int{fast[i]}) << what << " " << i;
}

// One microscale case: the reference (microscale_scales_ref unless codes are
// given, then fake_quant_microscale_ref) against the fused fast kernel, with
// and without a mask, in place, and in two ranges of blocks.
void check_microscale(
    const std::vector<float>& x,
    int64_t rows,
    int64_t cols,
    MicroscaleFormat format,
    float global_scale,
    const uint8_t* given_codes) {
  const int block = microscale_block_size(format);
  const int64_t blocks = rows * cols / block;
  std::vector<uint8_t> codes_ref(blocks);
  if (given_codes)
    codes_ref.assign(given_codes, given_codes + blocks);
  else
    microscale_scales_ref(
        x.data(), rows, cols, format, global_scale, codes_ref.data());
  std::vector<float> y_ref(x.size());
  std::vector<uint8_t> m_ref(x.size());
  fake_quant_microscale_ref(
      x.data(),
      y_ref.data(),
      m_ref.data(),
      rows,
      cols,
      format,
      codes_ref.data(),
      global_scale);

  std::vector<float> y(x.size());
  std::vector<uint8_t> m(x.size(), 7), codes(blocks, 7);
  fake_quant_microscale_fast(
      x.data(),
      y.data(),
      m.data(),
      rows,
      cols,
      format,
      given_codes,
      global_scale,
      codes.data());
  expect_same(y_ref, y, x, "y");
  expect_same_bytes(m_ref, m, "mask");
  expect_same_bytes(codes_ref, codes, "scale code");

  // In place, no mask, no codes out, split into two ranges of blocks (a
  // tensor of `blocks` rows of one block each).
  std::vector<float> inplace = x;
  const int64_t half = blocks / 2;
  fake_quant_microscale_fast(
      inplace.data(),
      inplace.data(),
      nullptr,
      half,
      block,
      format,
      given_codes,
      global_scale,
      nullptr);
  fake_quant_microscale_fast(
      inplace.data() + half * block,
      inplace.data() + half * block,
      nullptr,
      blocks - half,
      block,
      format,
      given_codes ? given_codes + half : nullptr,
      global_scale,
      nullptr);
  expect_same(y_ref, inplace, x, "in place");
}

TEST(MicroscaleFast, MatchesReferenceBitForBit) {
  for_each_isa([&] {
    uint32_t seed = 900;
    for (MicroscaleFormat format :
         {MicroscaleFormat::nvfp4,
          MicroscaleFormat::mxfp4,
          MicroscaleFormat::mxfp8}) {
      SCOPED_TRACE(microscale_format_info(format).name);
      const int block = microscale_block_size(format);
      for (auto [rows, cols_blocks] :
           {std::pair<int64_t, int64_t>{1, 1}, {3, 2}, {7, 5}, {64, 33}}) {
        const int64_t cols = cols_blocks * block;
        const auto x = block_values(rows * cols, block, seed++);
        std::vector<float> global_scales = {1.0f};
        if (format == MicroscaleFormat::nvfp4) {
          // The tensor's own, and ones that push scales to e4m3fn's
          // subnormals, its saturation, zero, negative, infinite and NaN.
          global_scales = {
              microscale_global_scale_ref(x.data(), x.size(), format),
              1.0f,
              2688.0f / 7.5f,
              1e-30f,
              3e30f,
              0.0f,
              -3.0f,
              kInf,
              std::numeric_limits<float>::quiet_NaN()};
        }
        for (float g : global_scales) {
          SCOPED_TRACE(g);
          check_microscale(x, rows, cols, format, g, nullptr);
          // Given codes: every byte.
          std::vector<uint8_t> given(rows * cols_blocks);
          for (size_t b = 0; b < given.size(); ++b)
            given[b] = static_cast<uint8_t>((b * 37 + seed) & 0xFF);
          check_microscale(x, rows, cols, format, g, given.data());
        }
      }
    }
  });
}

// Every float's rounding, through a block whose scale is 1 (y = x + 0.0):
// a sweep of the bit patterns, and each e2m1 threshold and e4m3fn midpoint
// (times the powers of two that keep it a float) with its neighbours.
TEST(MicroscaleFast, ElementRoundingOnEveryKindOfFloat) {
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 4099)
    x.push_back(bits_float(static_cast<uint32_t>(u)));
  std::vector<float> points = {
      0.25f,
      0.75f,
      1.25f,
      1.75f,
      2.5f,
      3.5f,
      5.0f,
      6.0f,
      448.0f,
      464.0f,
      480.0f};
  for (int code = 0; code < 126; ++code) {
    const float lo = fp8_decode<Fp8Format::e4m3fn>(static_cast<uint8_t>(code));
    const float hi =
        fp8_decode<Fp8Format::e4m3fn>(static_cast<uint8_t>(code + 1));
    points.push_back(lo);
    points.push_back((lo + hi) * 0.5f);
  }
  for (float t : points) {
    for (int e = -8; e <= 8; e += 8) {
      const float p = std::ldexp(t, e);
      for (int ulps = -3; ulps <= 3; ++ulps) {
        x.push_back(bits_float(float_bits(p) + ulps));
        x.push_back(-bits_float(float_bits(p) + ulps));
      }
    }
  }
  while (x.size() % 32)
    x.push_back(0.0f);
  const int64_t n = static_cast<int64_t>(x.size());
  for_each_isa([&] {
    for (MicroscaleFormat format :
         {MicroscaleFormat::nvfp4,
          MicroscaleFormat::mxfp4,
          MicroscaleFormat::mxfp8}) {
      SCOPED_TRACE(microscale_format_info(format).name);
      // NVFP4 code 0x38 is 1.0 (divided by the global scale 1); MX code 127
      // is 2^0.
      const uint8_t one = format == MicroscaleFormat::nvfp4 ? 0x38 : 127;
      const int block = microscale_block_size(format);
      const std::vector<uint8_t> codes(n / block, one);
      check_microscale(x, 1, n, format, 1.0f, codes.data());
    }
  });
}

TEST(MicroscaleFast, AmaxMatchesReference) {
  for_each_isa([&] {
    for (int64_t n : {0, 1, 7, 16, 33, 1023, 4096}) {
      for (uint32_t seed : {1u, 2u, 3u}) {
        auto x = block_values(n + (32 - n % 32) % 32, 32, seed + n);
        x.resize(n);
        ASSERT_EQ(
            bits_of(microscale_amax_ref(x.data(), n)),
            bits_of(microscale_amax_fast(x.data(), n)))
            << n;
        // Finite only, then with NaNs of different payloads at both ends.
        for (float& v : x)
          v = std::isfinite(v) ? v : 1.0f;
        ASSERT_EQ(
            bits_of(microscale_amax_ref(x.data(), n)),
            bits_of(microscale_amax_fast(x.data(), n)));
        if (n > 1) {
          x[0] = bits_float(0xFFFFFFFFu);
          x[n - 1] = bits_float(0x7FC00001u);
          ASSERT_EQ(
              bits_of(microscale_amax_ref(x.data(), n)),
              bits_of(microscale_amax_fast(x.data(), n)));
        }
      }
    }
  });
}

template <typename T>
std::vector<T> element_values(const std::vector<float>& v, uint32_t seed) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return to_bf16(v, seed);
  }
}

TYPED_TEST(KernelTest, GgufFastMatchesReferenceBitForBit) {
  using T = TypeParam;
  for_each_isa([&] {
    uint32_t seed = 1300;
    for (GgufType type :
         {GgufType::q8_0, GgufType::q4_0, GgufType::q5_0, GgufType::q5_1}) {
      SCOPED_TRACE(gguf_type_info(type).name);
      for (int64_t blocks : {1, 2, 5, 700, 3000}) {
        const auto x = element_values<T>(
            block_values(blocks * kGgufBlockSize, kGgufBlockSize, seed), seed);
        ++seed;
        std::vector<T> y_ref(x.size()), y(x.size());
        std::vector<uint8_t> m_ref(x.size()), m(x.size(), 7);
        fake_quant_gguf_ref(
            x.data(), y_ref.data(), m_ref.data(), type, 0, blocks);
        const int64_t half = blocks / 2;
        fake_quant_gguf_fast(x.data(), y.data(), m.data(), type, 0, half);
        fake_quant_gguf_fast(x.data(), y.data(), m.data(), type, half, blocks);
        expect_same(y_ref, y, x, "y");
        expect_same_bytes(m_ref, m, "mask");
        std::vector<T> inplace = x;
        fake_quant_gguf_fast(
            inplace.data(), inplace.data(), nullptr, type, 0, blocks);
        expect_same(y_ref, inplace, x, "in place");
      }
    }
  });
}

// Representations as gguf_search_ref finds them, with sub-block scales
// zeroed, and as random bytes (every d and dmin half: negative, zero,
// subnormal, inf, NaN).
std::vector<uint8_t> test_representations(
    const std::vector<float>& x,
    GgufType type,
    uint32_t seed) {
  const auto& info = gguf_type_info(type);
  const int64_t blocks = static_cast<int64_t>(x.size()) / kKQuantBlockSize;
  std::vector<float> finite = x;
  for (float& v : finite)
    v = std::isfinite(v) && std::fabs(v) < 1e30f ? v : 0.5f;
  std::vector<uint8_t> reps(blocks * info.representation_bytes);
  gguf_search_ref(finite.data(), finite.size(), type, reps.data());
  std::mt19937 rng(seed);
  const uint16_t halves[] = {
      0x0000,
      0x8000,
      0x0001,
      0x83FF,
      0x7C00,
      0xFC00,
      0x7E01,
      0x3C00,
      0xBC00,
      0x7BFF};
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* r = reps.data() + b * info.representation_bytes;
    const bool q6 = type == GgufType::q6_k;
    switch (b % 4) {
      case 0: // as searched
        break;
      case 1: // random bytes
        for (int i = 0; i < info.representation_bytes; ++i)
          r[i] = static_cast<uint8_t>(rng());
        break;
      case 2: { // a special d (and dmin)
        const uint16_t d = halves[rng() % std::size(halves)];
        uint8_t* at = r + (q6 ? 16 : 0);
        at[0] = static_cast<uint8_t>(d);
        at[1] = static_cast<uint8_t>(d >> 8);
        if (!q6) {
          const uint16_t dmin = halves[rng() % std::size(halves)];
          r[2] = static_cast<uint8_t>(dmin);
          r[3] = static_cast<uint8_t>(dmin >> 8);
        }
        break;
      }
      default: // some sub-block scales zero
        if (q6) {
          for (int s = 0; s < 16; ++s)
            if (rng() % 3 == 0)
              r[s] = 0;
        } else {
          // Scales 0..3 in the low 6 bits of bytes 4..7, 4..7 in the low
          // nibbles of bytes 12..15 and the top bits of bytes 4..7.
          for (int s = 0; s < 4; ++s) {
            if (rng() % 2)
              r[4 + s] &= 0xC0;
            if (rng() % 2) {
              r[12 + s] &= 0xF0;
              r[4 + s] &= 0x3F;
            }
          }
        }
        break;
    }
  }
  return reps;
}

TYPED_TEST(KernelTest, GgufFixedFastMatchesReferenceBitForBit) {
  using T = TypeParam;
  for_each_isa([&] {
    uint32_t seed = 1700;
    for (GgufType type : {GgufType::q4_k, GgufType::q5_k, GgufType::q6_k}) {
      SCOPED_TRACE(gguf_type_info(type).name);
      const int sub = type == GgufType::q6_k ? 16 : 32;
      for (int64_t blocks : {1, 3, 40, 150}) {
        const auto values =
            block_values(blocks * kKQuantBlockSize, sub, seed++);
        const auto reps = test_representations(values, type, seed++);
        const auto x = element_values<T>(values, seed);
        std::vector<T> y_ref(x.size()), y(x.size());
        std::vector<uint8_t> m_ref(x.size()), m(x.size(), 7);
        fake_quant_gguf_fixed_ref(
            x.data(), y_ref.data(), m_ref.data(), reps.data(), type, 0, blocks);
        const int64_t half = blocks / 2;
        fake_quant_gguf_fixed_fast(
            x.data(), y.data(), m.data(), reps.data(), type, 0, half);
        fake_quant_gguf_fixed_fast(
            x.data(), y.data(), m.data(), reps.data(), type, half, blocks);
        expect_same(y_ref, y, x, "y");
        expect_same_bytes(m_ref, m, "mask");
        std::vector<T> inplace = x;
        fake_quant_gguf_fixed_fast(
            inplace.data(),
            inplace.data(),
            nullptr,
            reps.data(),
            type,
            0,
            blocks);
        expect_same(y_ref, inplace, x, "in place");
      }
    }
  });
}

// ns per value of the reference and the fast kernels on a 4096 x 4096 float
// matrix, one thread, at the active instruction set (QAT_CPU_ISA lowers it):
//   qat_kernel_tests --gtest_also_run_disabled_tests
//     --gtest_filter='BlockFast.DISABLED_Timing'
TEST(BlockFast, DISABLED_Timing) {
  constexpr int64_t kRows = 4096, kCols = 4096, kN = kRows * kCols;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(kN), y(kN);
  for (float& v : x)
    v = normal(rng);
  std::vector<uint8_t> mask(kN), codes(kN / 16);
  const auto time = [&](const char* name, const std::function<void()>& f) {
    f(); // warm
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    std::printf("%-28s %7.3f ns/value\n", name, best * 1e9 / kN);
    return best;
  };
  std::printf("isa %s\n", cpu_isa_name(active_cpu_isa()));
  // The memory traffic alone: read x, write y and the mask.
  time("copy x to y, mask", [&] {
    std::memcpy(y.data(), x.data(), kN * sizeof(float));
    std::memset(mask.data(), 1, kN);
  });
  for (MicroscaleFormat format :
       {MicroscaleFormat::nvfp4,
        MicroscaleFormat::mxfp4,
        MicroscaleFormat::mxfp8}) {
    const std::string name = microscale_format_info(format).name;
    const float g = microscale_global_scale_ref(x.data(), kN, format);
    time((name + " ref").c_str(), [&] {
      microscale_scales_ref(x.data(), kRows, kCols, format, g, codes.data());
      fake_quant_microscale_ref(
          x.data(),
          y.data(),
          mask.data(),
          kRows,
          kCols,
          format,
          codes.data(),
          g);
    });
    time((name + " fast").c_str(), [&] {
      fake_quant_microscale_fast(
          x.data(),
          y.data(),
          mask.data(),
          kRows,
          kCols,
          format,
          nullptr,
          g,
          codes.data());
    });
  }
  for (GgufType type : {GgufType::q4_0, GgufType::q8_0, GgufType::q5_1}) {
    const std::string name = gguf_type_info(type).name;
    const int64_t blocks = kN / kGgufBlockSize;
    time((name + " ref").c_str(), [&] {
      fake_quant_gguf_ref(x.data(), y.data(), mask.data(), type, 0, blocks);
    });
    time((name + " fast").c_str(), [&] {
      fake_quant_gguf_fast(x.data(), y.data(), mask.data(), type, 0, blocks);
    });
  }
  for (GgufType type : {GgufType::q4_k, GgufType::q6_k}) {
    const std::string name = gguf_type_info(type).name + std::string(" fixed");
    const int64_t blocks = kN / kKQuantBlockSize;
    std::vector<uint8_t> reps(
        blocks * gguf_type_info(type).representation_bytes);
    gguf_search_ref(x.data(), kN, type, reps.data());
    time((name + " ref").c_str(), [&] {
      fake_quant_gguf_fixed_ref(
          x.data(), y.data(), mask.data(), reps.data(), type, 0, blocks);
    });
    time((name + " fast").c_str(), [&] {
      fake_quant_gguf_fixed_fast(
          x.data(), y.data(), mask.data(), reps.data(), type, 0, blocks);
    });
  }
}

TEST(CpuIsa, SelectionFollowsTheCpu) {
  EXPECT_TRUE(cpu_supports(CpuIsa::baseline));
  EXPECT_TRUE(cpu_supports(active_cpu_isa()));
  for (CpuIsa isa : {CpuIsa::baseline, CpuIsa::avx2, CpuIsa::avx512}) {
    if (!cpu_supports(isa)) {
      EXPECT_THROW(set_cpu_isa(isa), std::invalid_argument);
    }
  }
}

} // namespace
} // namespace qat::kernels
