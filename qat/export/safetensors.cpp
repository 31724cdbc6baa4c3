#include "qat/export/safetensors.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "qat/export/atomic_file.h"

namespace qat::safetensors {
namespace {

struct DtypeEntry {
  const char* name;
  torch::ScalarType dtype;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kDouble},
    {"F32", torch::kFloat},
    {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16},
    {"I64", torch::kLong},
    {"I32", torch::kInt},
    {"I16", torch::kShort},
    {"I8", torch::kChar},
    {"U8", torch::kByte},
    {"BOOL", torch::kBool},
    {"F8_E4M3", torch::kFloat8_e4m3fn},
    {"F8_E5M2", torch::kFloat8_e5m2},
};

// A header larger than this is not a tensor index but a corrupt or hostile
// length (the reference implementation's limit is 100 MB too).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("safetensors file '" + path + "': " + what);
}

torch::ScalarType parse_dtype(
    const std::string& path,
    const std::string& tensor,
    const nlohmann::json& value) {
  if (value.is_string()) {
    for (const DtypeEntry& e : kDtypes) {
      if (value.get<std::string>() == e.name)
        return e.dtype;
    }
  }
  fail(path, "tensor '" + tensor + "' has unknown dtype " + value.dump());
}

uint64_t parse_count(
    const std::string& path,
    const std::string& what,
    const nlohmann::json& value) {
  if (!value.is_number_unsigned())
    fail(path, what + " must be a non-negative integer, got " + value.dump());
  return value.get<uint64_t>();
}

TensorInfo parse_entry(
    const std::string& path,
    const std::string& name,
    const nlohmann::json& entry,
    uint64_t data_size) {
  if (!entry.is_object() || !entry.contains("dtype") ||
      !entry.contains("shape") || !entry.contains("data_offsets")) {
    fail(
        path,
        "tensor '" + name +
            "' must be an object with dtype, shape and data_offsets, got " +
            entry.dump());
  }
  TensorInfo info;
  info.dtype = parse_dtype(path, name, entry["dtype"]);
  const auto& shape = entry["shape"];
  if (!shape.is_array())
    fail(path, "tensor '" + name + "' shape must be an array");
  // The element count, checked for overflow: shape entries come from the file.
  uint64_t count = 1;
  for (const auto& dim : shape) {
    const uint64_t d = parse_count(path, "tensor '" + name + "' shape", dim);
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (d != 0 && count > std::numeric_limits<uint64_t>::max() / d)) {
      fail(path, "tensor '" + name + "' shape " + shape.dump() + " overflows");
    }
    count *= d;
    info.shape.push_back(static_cast<int64_t>(d));
  }
  const auto& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail(path, "tensor '" + name + "' data_offsets must be [begin, end]");
  info.begin = parse_count(path, "tensor '" + name + "' begin", offsets[0]);
  info.end = parse_count(path, "tensor '" + name + "' end", offsets[1]);
  if (info.begin > info.end || info.end > data_size) {
    fail(
        path,
        "tensor '" + name + "' data_offsets [" + std::to_string(info.begin) +
            ", " + std::to_string(info.end) + ") lie outside the " +
            std::to_string(data_size) + "-byte data section");
  }
  const uint64_t item = torch::elementSize(info.dtype);
  if (count > std::numeric_limits<uint64_t>::max() / item ||
      count * item != info.end - info.begin) {
    fail(
        path,
        "tensor '" + name + "' of shape " + shape.dump() + " and dtype " +
            entry["dtype"].get<std::string>() + " needs " +
            std::to_string(count * item) + " bytes but its data_offsets hold " +
            std::to_string(info.end - info.begin));
  }
  return info;
}

} // namespace

const char* dtype_name(torch::ScalarType dtype) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == dtype)
      return e.name;
  }
  throw std::invalid_argument(
      std::string("safetensors: no dtype name for ") + c10::toString(dtype));
}

File File::read(const std::string& path) {
  File file;
  file.path_ = path;
  file.mapping_ = std::make_shared<const MappedFile>(
      path, "safetensors file '" + path + "'");
  const uint64_t file_size = file.mapping_->size();
  if (file_size < 8) {
    fail(
        path,
        "truncated: " + std::to_string(file_size) +
            " bytes, shorter than the 8-byte header length");
  }
  const unsigned char* bytes = file.mapping_->data();
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i)
    header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    fail(
        path,
        "header length " + std::to_string(header_size) +
            " does not fit the file (" + std::to_string(file_size) +
            " bytes) or exceeds the 100 MB limit");
  }
  const std::string header(
      reinterpret_cast<const char*>(bytes) + 8, header_size);
  const uint64_t data_size = file_size - 8 - header_size;
  file.data_ = reinterpret_cast<const char*>(bytes) + 8 + header_size;

  nlohmann::json json;
  try {
    json = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    // parse_error, and out_of_range for a number beyond double's range
    // (found by the fuzzer: "data_offsets":[48e560]).
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!json.is_object())
    fail(path, "header must be a JSON object");

  std::vector<std::tuple<uint64_t, uint64_t, std::string>> by_offset;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        fail(path, "__metadata__ must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail(path, "__metadata__['" + key + "'] must be a string");
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const TensorInfo info = parse_entry(path, name, entry, data_size);
    by_offset.emplace_back(info.begin, info.end, name);
    file.infos_.emplace(name, info);
  }
  // The byte ranges must tile the data section: no overlap, no hole. Empty
  // tensors sort before a tensor that starts where they do.
  std::sort(by_offset.begin(), by_offset.end());
  uint64_t expected_begin = 0;
  for (const auto& [begin, end, name] : by_offset) {
    const TensorInfo& info = file.infos_.at(name);
    if (info.begin != expected_begin) {
      fail(
          path,
          "tensor '" + name + "' starts at byte " + std::to_string(info.begin) +
              " but the previous tensor ends at byte " +
              std::to_string(expected_begin) +
              (info.begin < expected_begin ? " (overlap)" : " (hole)"));
    }
    expected_begin = info.end;
    file.names_.push_back(name);
  }
  if (expected_begin != data_size) {
    fail(
        path,
        "tensors cover " + std::to_string(expected_begin) + " of the " +
            std::to_string(data_size) + " data bytes");
  }
  return file;
}

const TensorInfo& File::info(const std::string& name) const {
  const auto it = infos_.find(name);
  if (it == infos_.end())
    fail(path_, "has no tensor named '" + name + "'");
  return it->second;
}

torch::Tensor File::tensor(const std::string& name) const {
  const TensorInfo& i = info(name);
  torch::Tensor out = torch::empty(i.shape, torch::dtype(i.dtype));
  std::memcpy(out.data_ptr(), data_ + i.begin, i.end - i.begin);
  return out;
}

torch::Tensor File::mapped(const std::string& name) const {
  const TensorInfo& i = info(name);
  // The tensor keeps the mapping alive; the pages are read-only.
  auto keep = mapping_;
  return torch::from_blob(
      const_cast<char*>(data_ + i.begin),
      i.shape,
      [keep](void*) {},
      torch::dtype(i.dtype));
}

void File::release(const std::string& name) const {
  const TensorInfo& i = info(name);
  mapping_->release(data_ + i.begin, data_ + i.end);
}

void write(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__" || header.contains(name)) {
      throw std::invalid_argument(
          "safetensors::write('" + path + "'): duplicate or reserved name '" +
          name + "'");
    }
    const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {
        {"dtype", dtype_name(t.scalar_type())},
        {"shape", t.sizes().vec()},
        {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(t);
  }
  std::string text = header.dump();
  // Pad with spaces so that the data starts 8-byte aligned, as the reference
  // writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomically(path, "safetensors::write", [&](std::FILE* f) {
    unsigned char length_bytes[8];
    uint64_t size = text.size();
    for (unsigned char& b : length_bytes) {
      b = static_cast<unsigned char>(size & 0xFF);
      size >>= 8;
    }
    bool ok = std::fwrite(length_bytes, 1, 8, f) == 8;
    ok = ok && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const torch::Tensor& t : data) {
      const size_t bytes = t.numel() * t.element_size();
      ok = ok && std::fwrite(t.data_ptr(), 1, bytes, f) == bytes;
    }
    return ok;
  });
}

} // namespace qat::safetensors
