// safetensors (Hugging Face's tensor file format), read and written by qat's
// own code: an 8-byte little-endian header length N, N bytes of JSON naming
// each tensor's dtype, shape and [begin, end) byte range in the data that
// follows, an optional "__metadata__" string map, then the data.
//
// The reader checks everything it is given before it trusts it: the header
// length against the file size, the JSON, every dtype and shape, that each
// byte range holds exactly shape x element size bytes inside the data, and
// that the ranges tile the data without overlaps or holes (as the reference
// implementation requires). Errors name the file and the tensor.
//
// Example:
//   qat::safetensors::write("model.safetensors", {{"fc.weight", w}});
//   auto file = qat::safetensors::File::read("model.safetensors");
//   torch::Tensor w2 = file.tensor("fc.weight");
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qat/export/mapped_file.h"

namespace qat::safetensors {

struct TensorInfo {
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0; // byte range in the data section
};

class File {
 public:
  // Maps the file and validates its header and every tensor's byte range;
  // throws std::runtime_error naming the file and what is wrong. The data is
  // not read until a tensor is asked for.
  static File read(const std::string& path);

  const std::string& path() const {
    return path_;
  }
  // Tensor names in the order of their data.
  const std::vector<std::string>& names() const {
    return names_;
  }
  bool contains(const std::string& name) const {
    return infos_.count(name) != 0;
  }
  const TensorInfo& info(const std::string& name) const;
  // A CPU tensor owning a copy of the named tensor's data.
  torch::Tensor tensor(const std::string& name) const;
  // The named tensor in place, in the mapped file: read-only (writing to it
  // faults), valid as long as the tensor lives. Copying it into a parameter
  // with copy_() converts its dtype without a second buffer.
  torch::Tensor mapped(const std::string& name) const;
  // Drops the tensor's pages from memory (they are read again if touched):
  // after copying a tensor out, the file's pages do not add to the peak.
  void release(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> mapping_;
  const char* data_ = nullptr; // the data section, in the mapping
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// Writes the tensors (any device, any layout; stored contiguous, in the given
// order) atomically: a temporary file in the same folder, flushed to disk,
// then renamed over `path`.
void write(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// safetensors dtype names ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_name(torch::ScalarType dtype);

} // namespace qat::safetensors
