// GGUF v3, the file format of llama.cpp: a header, typed key/value metadata,
// tensor infos and 32-byte-aligned tensor data.
//
// The reader checks every count, length, type and offset against the file
// before it trusts it (files come from the internet), and dequantizes F32,
// F16, BF16, Q8_0, Q4_0 and Q4_1 tensors to float32. The writer emits what
// llama.cpp and gguf-py read, atomically (temporary file + rename).
//
// Shapes are in torch order (rows first); GGUF stores dimensions innermost
// first, and the files say [cols, rows].
//
// Example:
//   auto file = qat::gguf::File::read("model.gguf");
//   int64_t layers = file.get("llama.block_count").as_int();
//   torch::Tensor w = file.dequantize("blk.0.attn_q.weight");
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace qat::gguf {

class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ValueType : uint32_t {
  uint8 = 0,
  int8 = 1,
  uint16 = 2,
  int16 = 3,
  uint32 = 4,
  int32 = 5,
  float32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  uint64 = 10,
  int64 = 11,
  float64 = 12,
};

// ggml's tensor types that qat reads or writes.
enum class TensorType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  bf16 = 30,
  mxfp4 = 39,
};
const char* type_name(TensorType type);
// Bytes of `elements` values (a multiple of the block size for the block
// types).
int64_t tensor_bytes(TensorType type, int64_t elements);

// One metadata value: a scalar, a string, or an array of values of one type.
struct Value {
  ValueType type = ValueType::uint32;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<Value>>
      data;

  static Value of(uint32_t v);
  static Value of(int32_t v);
  static Value of(float v);
  static Value of(bool v);
  static Value of(std::string v);
  static Value strings(const std::vector<std::string>& v);
  static Value int32s(const std::vector<int32_t>& v);
  static Value float32s(const std::vector<float>& v);

  // Conversions that throw GgufError when the type does not fit.
  int64_t as_int() const;
  double as_float() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
  std::vector<std::string> as_strings() const;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape; // torch order
  TensorType type = TensorType::f32;
  uint64_t offset = 0; // in the file
  uint64_t bytes = 0;
};

class File {
 public:
  // Reads and validates the whole file; throws GgufError naming the file,
  // the byte offset and the problem.
  static File read(const std::string& path);

  const std::string& path() const {
    return path_;
  }
  uint32_t version() const {
    return version_;
  }
  bool has(const std::string& key) const {
    return metadata_.count(key) != 0;
  }
  const Value& get(const std::string& key) const;
  const std::map<std::string, Value>& metadata() const {
    return metadata_;
  }
  const std::vector<TensorInfo>& tensors() const {
    return tensors_;
  }
  const TensorInfo& info(const std::string& name) const;
  // The stored bytes (uint8), and the values as float32 in torch order.
  torch::Tensor raw(const std::string& name) const;
  torch::Tensor dequantize(const std::string& name) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  std::shared_ptr<std::vector<uint8_t>> bytes_;
  std::map<std::string, Value> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

class Writer {
 public:
  void set(const std::string& key, Value value);
  // `data`: the stored bytes (uint8, tensor_bytes(type, numel) of them) for
  // block types, or float32 values for f32 / f16 (converted here).
  void add_tensor(
      const std::string& name,
      TensorType type,
      std::vector<int64_t> shape,
      const torch::Tensor& data);
  // Writes GGUF v3 with `general.alignment` (default 32) to `path`.
  void write(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, Value>> metadata_;
  struct Entry {
    TensorInfo info;
    torch::Tensor bytes;
  };
  std::vector<Entry> tensors_;
};

} // namespace qat::gguf
