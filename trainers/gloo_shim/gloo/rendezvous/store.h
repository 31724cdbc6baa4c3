// Shim: mirrors the *virtual interface* of gloo::rendezvous::Store as of the
// gloo revision bundled with torch >= 2.1 (IStore base + "store v2" API), so
// that the inline c10d::ProcessGroupGloo::GlooStore declaration type-checks.
// Do NOT instantiate c10d::ProcessGroupGloo::GlooStore in code using this shim.
#pragma once
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>
#define GLOO_STORE_HAS_STORE_V2 1
namespace gloo {
class IStore {
 public:
  virtual ~IStore() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual std::vector<char> wait_get(
      const std::string& key,
      const std::chrono::milliseconds& timeout) {
    wait({key}, timeout);
    return get(key);
  }
  virtual void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds& timeout) = 0;
  virtual bool has_v2_support() = 0;
  virtual std::vector<std::vector<char>> multi_get(
      const std::vector<std::string>& keys) = 0;
  virtual void multi_set(
      const std::vector<std::string>& keys,
      const std::vector<std::vector<char>>& values) = 0;
  virtual void append(
      const std::string& key,
      const std::vector<char>& value) = 0;
  virtual int64_t add(const std::string& key, int64_t value) = 0;
};
namespace rendezvous {
class Store : public IStore {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout =
      std::chrono::seconds(30);
  ~Store() override = default;
  void set(const std::string& key, const std::vector<char>& data) override = 0;
  std::vector<char> get(const std::string& key) override = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds&) override {
    wait(keys);
  }
  bool has_v2_support() override {
    return false;
  }
  std::vector<std::vector<char>> multi_get(
      const std::vector<std::string>&) override {
    throw std::runtime_error("shim: multi_get");
  }
  void multi_set(
      const std::vector<std::string>&,
      const std::vector<std::vector<char>>&) override {
    throw std::runtime_error("shim: multi_set");
  }
  void append(const std::string&, const std::vector<char>&) override {
    throw std::runtime_error("shim: append");
  }
  int64_t add(const std::string&, int64_t) override {
    throw std::runtime_error("shim: add");
  }
};
} // namespace rendezvous
} // namespace gloo
