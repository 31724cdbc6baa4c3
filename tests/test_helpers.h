// Shared test data and comparisons for the LibTorch tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
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

// Bitwise equality of two tensors of any dtype (NaN payloads included).
inline ::testing::AssertionResult bitwise_equal(
    const torch::Tensor& a,
    const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure()
        << "shape/dtype " << a.sizes() << " " << a.scalar_type() << " vs "
        << b.sizes() << " " << b.scalar_type();
  }
  const auto int_type = std::map<size_t, torch::ScalarType>{
      {1, torch::kByte},
      {2, torch::kShort},
      {4, torch::kInt},
      {8, torch::kLong}}.at(a.element_size());
  const auto flat = [&](const torch::Tensor& t) {
    return t.contiguous().view(int_type).reshape(-1);
  };
  const auto ia = flat(a), ib = flat(b);
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

// A fresh directory for one test, removed with everything in it afterwards:
// file by file, deepest first (std::filesystem::remove_all crashes in a
// process that has loaded libtorch 2.11's copy of it).
class TempDir {
 public:
  TempDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
        ("qat_" + std::to_string(::getpid()) + "_" + test->test_suite_name() +
         "_" + test->name());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::vector<std::filesystem::path> paths;
    for (const auto& e : std::filesystem::recursive_directory_iterator(path_))
      paths.push_back(e.path());
    std::sort(paths.rbegin(), paths.rend());
    for (const auto& p : paths)
      std::filesystem::remove(p);
    std::filesystem::remove(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const {
    return path_;
  }
  std::string operator/(const std::string& name) const {
    return (path_ / name).string();
  }

 private:
  std::filesystem::path path_;
};

} // namespace qat::testing
