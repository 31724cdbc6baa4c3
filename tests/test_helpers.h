// Shared test data and comparisons for the LibTorch tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace qat::testing {

// Seeded values that decide rounding and clamping: exact .5 ties of `scale`,
// the code-range edges, huge values, denormals and zeros, then normals of three
// magnitudes; shape `sizes`. With `finite_only` the non-finite and >= 2^63 code
// values are left out (ATen's per-channel kernel casts them to int64, which is
// undefined behaviour).
inline torch::Tensor hard_values(
    at::IntArrayRef sizes,
    double scale,
    uint64_t seed,
    bool finite_only = false) {
  torch::manual_seed(seed);
  const int64_t n = c10::multiply_integers(sizes);
  std::vector<float> special;
  for (int k = -140; k <= 140; ++k)
    special.push_back(static_cast<float>((k + 0.5) * scale));
  for (float v :
       {0.0f,
        -0.0f,
        1e-40f,
        -1e-40f,
        std::numeric_limits<float>::denorm_min()}) {
    special.push_back(v);
  }
  if (!finite_only) {
    for (float v :
         {1e30f,
          -1e30f,
          3.4e38f,
          std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity()}) {
      special.push_back(v);
    }
  }
  auto values = torch::randn({n}) * scale * 40;
  values.slice(0, 0, n / 3) /= 30;
  values.slice(0, n / 3, 2 * n / 3) *= 10;
  const int64_t k =
      std::min<int64_t>(n / 2, static_cast<int64_t>(special.size()));
  values.slice(0, 0, k).copy_(
      torch::tensor(std::vector<float>(special.begin(), special.begin() + k)));
  return values.index_select(0, torch::randperm(n)).reshape(sizes);
}

// Bitwise equality of two floating tensors (NaN payloads included).
inline ::testing::AssertionResult bitwise_equal(
    const torch::Tensor& a,
    const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure()
        << "shape/dtype " << a.sizes() << " " << a.scalar_type() << " vs "
        << b.sizes() << " " << b.scalar_type();
  }
  const auto int_type = a.element_size() == 4 ? torch::kInt : torch::kShort;
  const auto ia = a.contiguous().view(int_type),
             ib = b.contiguous().view(int_type);
  const auto differ = ia.ne(ib).nonzero();
  if (differ.size(0) == 0)
    return ::testing::AssertionSuccess();
  const int64_t i = differ[0][0].item<int64_t>();
  const auto fa = a.reshape(-1).to(torch::kFloat),
             fb = b.reshape(-1).to(torch::kFloat);
  return ::testing::AssertionFailure()
      << differ.size(0) << " of " << a.numel()
      << " elements differ; first at flat index " << i << ": "
      << fa[i].item<float>() << " vs " << fb[i].item<float>();
}

// The message of the E that `call` throws; "(no error)" when it returns.
template <typename E = std::exception>
std::string error_message(const std::function<void()>& call) {
  try {
    call();
  } catch (const E& e) {
    return e.what();
  }
  return "(no error)";
}

// Passes when `call` throws an E whose message contains `words`.
template <typename E>
::testing::AssertionResult throws_with(
    const std::function<void()>& call,
    const std::string& words) {
  const std::string message = error_message<E>(call);
  if (message != "(no error)" && message.find(words) != std::string::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
      << "expected an error mentioning '" << words << "', got: " << message;
}

} // namespace qat::testing
