// Torch-free kernel tests: the fast kernels against the reference kernels (bit
// for bit), on odd sizes and on the values where rounding and clamping are
// decided, and the scalar formulas against the C library. The ATen comparisons
// live in test_ops.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kernels/quant_math.h"
#include "kernels/ref/fake_quant_ref.h"
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
