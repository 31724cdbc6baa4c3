#include "qat/export/gguf.h"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

#include "kernels/quant_math.h"
#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"
#include "qat/export/atomic_file.h"

namespace qat::gguf {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kBlock = 32;

struct TypeLayout {
  int64_t block_elements, block_bytes;
};

// The block type qat trains and writes with this id (kernels/ref/gguf_ref.h),
// or nullptr.
const kernels::GgufTypeInfo* block_type(TensorType t) {
  int count = 0;
  const auto* types = kernels::gguf_types(&count);
  for (int i = 0; i < count; ++i) {
    if (types[i].ggml_id == static_cast<uint32_t>(t))
      return &types[i];
  }
  return nullptr;
}

// The microscaling format qat writes with this id
// (kernels/ref/microscale_ref.h), or nullptr.
const kernels::MicroscaleFormatInfo* microscale_type(TensorType t) {
  return kernels::find_gguf_microscale_format(static_cast<uint32_t>(t));
}

bool known(TensorType t) {
  switch (t) {
    case TensorType::f32:
    case TensorType::f16:
    case TensorType::bf16:
    case TensorType::q4_1:
      return true;
    default:
      return block_type(t) != nullptr || microscale_type(t) != nullptr;
  }
}

TypeLayout layout(TensorType t) {
  switch (t) {
    case TensorType::f32:
      return {1, 4};
    case TensorType::f16:
    case TensorType::bf16:
      return {1, 2};
    case TensorType::q4_1:
      return {kBlock, 20};
    default:
      if (const auto* info = block_type(t))
        return {info->block_size, info->block_bytes};
      if (const auto* info = microscale_type(t))
        return {info->block_size, info->gguf_block_bytes};
  }
  throw GgufError("unknown tensor type");
}

// A bounds-checked cursor over the file's bytes.
class Cursor {
 public:
  Cursor(const std::string& path, const std::vector<uint8_t>& bytes)
      : path_(path), bytes_(bytes) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw GgufError(
        "GGUF file '" + path_ + "' at byte " + std::to_string(pos_) + ": " +
        what);
  }
  uint64_t remaining() const {
    return bytes_.size() - pos_;
  }
  uint64_t position() const {
    return pos_;
  }
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(
          std::string("truncated: ") + what + " needs " + std::to_string(n) +
          " bytes, " + std::to_string(remaining()) + " left");
  }
  template <typename T>
  T scalar(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const auto n = scalar<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  const std::vector<uint8_t>& bytes_;
  uint64_t pos_ = 0;
};

// The smallest encoding of one value of `type`, to bound counts by the file.
uint64_t min_bytes(ValueType type) {
  switch (type) {
    case ValueType::uint8:
    case ValueType::int8:
    case ValueType::boolean:
      return 1;
    case ValueType::uint16:
    case ValueType::int16:
      return 2;
    case ValueType::uint32:
    case ValueType::int32:
    case ValueType::float32:
      return 4;
    case ValueType::string:
    case ValueType::uint64:
    case ValueType::int64:
    case ValueType::float64:
      return 8;
    case ValueType::array:
      return 12;
  }
  return 1;
}

Value read_value(Cursor& c, ValueType type, int depth) {
  Value v;
  v.type = type;
  switch (type) {
    case ValueType::uint8:
      v.data = uint64_t{c.scalar<uint8_t>("uint8")};
      break;
    case ValueType::int8:
      v.data = int64_t{c.scalar<int8_t>("int8")};
      break;
    case ValueType::uint16:
      v.data = uint64_t{c.scalar<uint16_t>("uint16")};
      break;
    case ValueType::int16:
      v.data = int64_t{c.scalar<int16_t>("int16")};
      break;
    case ValueType::uint32:
      v.data = uint64_t{c.scalar<uint32_t>("uint32")};
      break;
    case ValueType::int32:
      v.data = int64_t{c.scalar<int32_t>("int32")};
      break;
    case ValueType::float32:
      v.data = double{c.scalar<float>("float32")};
      break;
    case ValueType::boolean: {
      const auto b = c.scalar<uint8_t>("bool");
      if (b > 1)
        c.fail("bool value " + std::to_string(b));
      v.data = b == 1;
      break;
    }
    case ValueType::string:
      v.data = c.string("string");
      break;
    case ValueType::uint64:
      v.data = c.scalar<uint64_t>("uint64");
      break;
    case ValueType::int64:
      v.data = c.scalar<int64_t>("int64");
      break;
    case ValueType::float64:
      v.data = c.scalar<double>("float64");
      break;
    case ValueType::array: {
      if (depth > 0)
        c.fail("nested arrays are not supported");
      const auto item =
          static_cast<ValueType>(c.scalar<uint32_t>("array type"));
      if (static_cast<uint32_t>(item) > 12)
        c.fail(
            "unknown array item type " +
            std::to_string(static_cast<uint32_t>(item)));
      const auto n = c.scalar<uint64_t>("array length");
      if (n > c.remaining() / min_bytes(item))
        c.fail(
            "array of " + std::to_string(n) +
            " items does not fit in the file");
      std::vector<Value> items;
      items.reserve(n);
      for (uint64_t i = 0; i < n; ++i)
        items.push_back(read_value(c, item, depth + 1));
      v.data = std::move(items);
      break;
    }
    default:
      c.fail(
          "unknown value type " + std::to_string(static_cast<uint32_t>(type)));
  }
  return v;
}

void dequantize_into(
    TensorType type,
    const uint8_t* src,
    int64_t n,
    float* out) {
  switch (type) {
    case TensorType::f32:
      std::memcpy(out, src, n * sizeof(float));
      return;
    case TensorType::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = kernels::half_bits_to_float(h);
      }
      return;
    case TensorType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t bits = uint32_t{h} << 16;
        std::memcpy(out + i, &bits, 4);
      }
      return;
    default:
      if (const auto* info = microscale_type(type)) {
        kernels::unpack_gguf_microscale_ref(src, n, info->format, out);
        return;
      }
      kernels::dequantize_gguf_ref(src, n, block_type(type)->type, out);
      return;
    case TensorType::q4_1:
      // Read only (llama.cpp's older 4-bit type): fp16 d, fp16 m, 16 bytes of
      // nibbles, low nibbles first; x = q * d + m, as gguf-py computes it.
      for (int64_t b = 0; b < n / kBlock; ++b) {
        const uint8_t* block = src + b * 20;
        uint16_t d_bits, m_bits;
        std::memcpy(&d_bits, block, 2);
        std::memcpy(&m_bits, block + 2, 2);
        const float d = kernels::half_bits_to_float(d_bits);
        const float m = kernels::half_bits_to_float(m_bits);
        for (int j = 0; j < kBlock / 2; ++j) {
          out[b * kBlock + j] = static_cast<float>(block[4 + j] & 0x0F) * d + m;
          out[b * kBlock + j + kBlock / 2] =
              static_cast<float>(block[4 + j] >> 4) * d + m;
        }
      }
      return;
  }
}

} // namespace

const char* type_name(TensorType type) {
  switch (type) {
    case TensorType::f32:
      return "F32";
    case TensorType::f16:
      return "F16";
    case TensorType::q4_1:
      return "Q4_1";
    case TensorType::bf16:
      return "BF16";
    case TensorType::mxfp4:
      return "MXFP4";
    default:
      break;
  }
  // ggml's names of the block types, upper case.
  static const std::map<uint32_t, std::string> names = [] {
    std::map<uint32_t, std::string> out;
    int count = 0;
    const auto* types = kernels::gguf_types(&count);
    for (int i = 0; i < count; ++i) {
      std::string name = types[i].name;
      for (auto& c : name)
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      out[types[i].ggml_id] = name;
    }
    return out;
  }();
  const auto it = names.find(static_cast<uint32_t>(type));
  return it == names.end() ? "?" : it->second.c_str();
}

int64_t tensor_bytes(TensorType type, int64_t elements) {
  const auto l = layout(type);
  if (elements % l.block_elements != 0) {
    throw GgufError(
        std::string(type_name(type)) + " needs a multiple of " +
        std::to_string(l.block_elements) + " values, got " +
        std::to_string(elements));
  }
  return elements / l.block_elements * l.block_bytes;
}

// ---------------------------------------------------------------------------
// Value

Value Value::of(uint32_t v) {
  return {ValueType::uint32, uint64_t{v}};
}
Value Value::of(int32_t v) {
  return {ValueType::int32, int64_t{v}};
}
Value Value::of(float v) {
  return {ValueType::float32, double{v}};
}
Value Value::of(bool v) {
  return {ValueType::boolean, v};
}
Value Value::of(std::string v) {
  return {ValueType::string, std::move(v)};
}
Value Value::strings(const std::vector<std::string>& v) {
  std::vector<Value> items;
  for (const auto& s : v)
    items.push_back(of(s));
  return {ValueType::array, std::move(items)};
}
Value Value::int32s(const std::vector<int32_t>& v) {
  std::vector<Value> items;
  for (int32_t x : v)
    items.push_back(of(x));
  return {ValueType::array, std::move(items)};
}
Value Value::float32s(const std::vector<float>& v) {
  std::vector<Value> items;
  for (float x : v)
    items.push_back(of(x));
  return {ValueType::array, std::move(items)};
}

int64_t Value::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&data))
    return static_cast<int64_t>(*u);
  if (const auto* i = std::get_if<int64_t>(&data))
    return *i;
  throw GgufError("GGUF value is not an integer");
}
double Value::as_float() const {
  if (const auto* d = std::get_if<double>(&data))
    return *d;
  return static_cast<double>(as_int());
}
bool Value::as_bool() const {
  if (const auto* b = std::get_if<bool>(&data))
    return *b;
  throw GgufError("GGUF value is not a bool");
}
const std::string& Value::as_string() const {
  if (const auto* s = std::get_if<std::string>(&data))
    return *s;
  throw GgufError("GGUF value is not a string");
}
const std::vector<Value>& Value::as_array() const {
  if (const auto* a = std::get_if<std::vector<Value>>(&data))
    return *a;
  throw GgufError("GGUF value is not an array");
}
std::vector<std::string> Value::as_strings() const {
  std::vector<std::string> out;
  for (const auto& v : as_array())
    out.push_back(v.as_string());
  return out;
}

// ---------------------------------------------------------------------------
// File

File File::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw GgufError(
        "GGUF file '" + path + "': cannot open: " + std::strerror(errno));
  File f;
  f.path_ = path;
  f.bytes_ = std::make_shared<std::vector<uint8_t>>(
      std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  const auto& bytes = *f.bytes_;
  Cursor c(f.path_, bytes);
  c.need(4, "magic");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0)
    c.fail("not a GGUF file (magic is not 'GGUF')");
  c.scalar<uint32_t>("magic");
  f.version_ = c.scalar<uint32_t>("version");
  if (f.version_ != 2 && f.version_ != 3)
    c.fail(
        "unsupported GGUF version " + std::to_string(f.version_) +
        " (2 and 3 are read)");
  const auto tensor_count = c.scalar<uint64_t>("tensor count");
  const auto kv_count = c.scalar<uint64_t>("metadata count");
  // Each key/value takes at least 13 bytes and each tensor info at least 24.
  if (kv_count > c.remaining() / 13)
    c.fail(
        "metadata count " + std::to_string(kv_count) +
        " does not fit in the file");
  if (tensor_count > c.remaining() / 24)
    c.fail(
        "tensor count " + std::to_string(tensor_count) +
        " does not fit in the file");
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = c.string("key");
    const auto type = static_cast<ValueType>(c.scalar<uint32_t>("value type"));
    if (f.metadata_.count(key))
      c.fail("duplicate key '" + key + "'");
    f.metadata_.emplace(std::move(key), read_value(c, type, 0));
  }
  uint64_t alignment = kDefaultAlignment;
  if (f.has("general.alignment")) {
    const int64_t a = f.get("general.alignment").as_int();
    if (a <= 0 || (a & (a - 1)) != 0)
      c.fail(
          "general.alignment " + std::to_string(a) + " is not a power of two");
    alignment = static_cast<uint64_t>(a);
  }
  std::vector<uint64_t> relative_offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t;
    t.name = c.string("tensor name");
    const auto n_dims = c.scalar<uint32_t>("tensor dimensions");
    if (n_dims == 0 || n_dims > 4)
      c.fail(
          "tensor '" + t.name + "' has " + std::to_string(n_dims) +
          " dimensions (1..4)");
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto dim = c.scalar<uint64_t>("tensor dimension");
      if (dim == 0 || dim > (uint64_t{1} << 40) ||
          static_cast<uint64_t>(elements) > (uint64_t{1} << 42) / dim)
        c.fail(
            "tensor '" + t.name + "' has an impossible dimension " +
            std::to_string(dim));
      elements *= static_cast<int64_t>(dim);
      t.shape.insert(t.shape.begin(), static_cast<int64_t>(dim));
    }
    t.type = static_cast<TensorType>(c.scalar<uint32_t>("tensor type"));
    if (!known(t.type))
      c.fail(
          "tensor '" + t.name + "' has a ggml type qat does not read (" +
          std::to_string(static_cast<uint32_t>(t.type)) + ")");
    if (elements % layout(t.type).block_elements != 0)
      c.fail(
          "tensor '" + t.name + "' is not a whole number of " +
          type_name(t.type) + " blocks");
    t.bytes = static_cast<uint64_t>(tensor_bytes(t.type, elements));
    relative_offsets.push_back(c.scalar<uint64_t>("tensor offset"));
    if (f.index_.count(t.name))
      c.fail("duplicate tensor '" + t.name + "'");
    f.index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }
  const uint64_t data_start =
      (c.position() + alignment - 1) / alignment * alignment;
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    auto& t = f.tensors_[i];
    const uint64_t rel = relative_offsets[i];
    if (rel % alignment != 0 || rel > bytes.size() ||
        data_start > bytes.size() - rel ||
        t.bytes > bytes.size() - data_start - rel) {
      throw GgufError(
          "GGUF file '" + path + "': tensor '" + t.name + "' at data offset " +
          std::to_string(rel) + " (" + std::to_string(t.bytes) +
          " bytes) lies outside the file or is not aligned to " +
          std::to_string(alignment));
    }
    t.offset = data_start + rel;
  }
  return f;
}

const Value& File::get(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end())
    throw GgufError("GGUF file '" + path_ + "': no metadata key '" + key + "'");
  return it->second;
}

const TensorInfo& File::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end())
    throw GgufError("GGUF file '" + path_ + "': no tensor '" + name + "'");
  return tensors_[it->second];
}

torch::Tensor File::raw(const std::string& name) const {
  const auto& t = info(name);
  auto out = torch::empty({static_cast<int64_t>(t.bytes)}, torch::kByte);
  std::memcpy(out.data_ptr<uint8_t>(), bytes_->data() + t.offset, t.bytes);
  return out;
}

torch::Tensor File::dequantize(const std::string& name) const {
  const auto& t = info(name);
  auto out = torch::empty(t.shape, torch::kFloat);
  dequantize_into(
      t.type, bytes_->data() + t.offset, out.numel(), out.data_ptr<float>());
  return out;
}

// ---------------------------------------------------------------------------
// Writer

void Writer::set(const std::string& key, Value value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

void Writer::add_tensor(
    const std::string& name,
    TensorType type,
    std::vector<int64_t> shape,
    const torch::Tensor& data) {
  int64_t elements = 1;
  for (int64_t d : shape)
    elements *= d;
  torch::Tensor bytes;
  if (type == TensorType::f32 || type == TensorType::f16) {
    const auto values = data.to(torch::kFloat).contiguous();
    if (values.numel() != elements)
      throw GgufError(
          "GGUF tensor '" + name + "': values do not match its shape");
    bytes = (type == TensorType::f32 ? values : values.to(torch::kHalf))
                .view(torch::kByte)
                .reshape(-1);
  } else {
    bytes = data.to(torch::kByte).contiguous().reshape(-1);
  }
  if (bytes.numel() != tensor_bytes(type, elements)) {
    throw GgufError(
        "GGUF tensor '" + name + "': " + std::to_string(bytes.numel()) +
        " bytes for " + std::to_string(elements) + " " + type_name(type) +
        " values");
  }
  tensors_.push_back(
      {{name, std::move(shape), type, 0, static_cast<uint64_t>(bytes.numel())},
       bytes});
}

namespace {

class Out {
 public:
  explicit Out(std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  template <typename T>
  void scalar(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void value(const Value& v) {
    switch (v.type) {
      case ValueType::uint8:
        return scalar<uint8_t>(static_cast<uint8_t>(v.as_int()));
      case ValueType::int8:
        return scalar<int8_t>(static_cast<int8_t>(v.as_int()));
      case ValueType::uint16:
        return scalar<uint16_t>(static_cast<uint16_t>(v.as_int()));
      case ValueType::int16:
        return scalar<int16_t>(static_cast<int16_t>(v.as_int()));
      case ValueType::uint32:
        return scalar<uint32_t>(static_cast<uint32_t>(v.as_int()));
      case ValueType::int32:
        return scalar<int32_t>(static_cast<int32_t>(v.as_int()));
      case ValueType::float32:
        return scalar<float>(static_cast<float>(v.as_float()));
      case ValueType::boolean:
        return scalar<uint8_t>(v.as_bool() ? 1 : 0);
      case ValueType::string:
        return string(v.as_string());
      case ValueType::uint64:
        return scalar<uint64_t>(static_cast<uint64_t>(v.as_int()));
      case ValueType::int64:
        return scalar<int64_t>(v.as_int());
      case ValueType::float64:
        return scalar<double>(v.as_float());
      case ValueType::array: {
        const auto& items = v.as_array();
        scalar<uint32_t>(static_cast<uint32_t>(
            items.empty() ? ValueType::uint8 : items[0].type));
        scalar<uint64_t>(items.size());
        for (const auto& item : items)
          value(item);
        return;
      }
    }
  }
  void pad_to(uint64_t alignment) {
    bytes_.resize((bytes_.size() + alignment - 1) / alignment * alignment, 0);
  }

 private:
  std::vector<uint8_t>& bytes_;
};

} // namespace

void Writer::write(const std::string& path) const {
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [k, v] : metadata_)
    if (k == "general.alignment")
      alignment = static_cast<uint64_t>(v.as_int());
  std::vector<uint8_t> header;
  Out out(header);
  uint32_t magic;
  std::memcpy(&magic, kMagic, 4);
  out.scalar<uint32_t>(magic);
  out.scalar<uint32_t>(3);
  out.scalar<uint64_t>(tensors_.size());
  out.scalar<uint64_t>(metadata_.size());
  for (const auto& [k, v] : metadata_) {
    out.string(k);
    out.scalar<uint32_t>(static_cast<uint32_t>(v.type));
    out.value(v);
  }
  uint64_t offset = 0;
  for (const auto& e : tensors_) {
    out.string(e.info.name);
    out.scalar<uint32_t>(static_cast<uint32_t>(e.info.shape.size()));
    for (auto it = e.info.shape.rbegin(); it != e.info.shape.rend(); ++it)
      out.scalar<uint64_t>(static_cast<uint64_t>(*it));
    out.scalar<uint32_t>(static_cast<uint32_t>(e.info.type));
    out.scalar<uint64_t>(offset);
    offset += (e.info.bytes + alignment - 1) / alignment * alignment;
  }
  out.pad_to(alignment);

  write_file_atomically(path, "GGUF file '" + path + "'", [&](std::FILE* f) {
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
    const std::vector<uint8_t> zeros(alignment, 0);
    for (const auto& e : tensors_) {
      ok = ok &&
          std::fwrite(e.bytes.data_ptr<uint8_t>(), 1, e.info.bytes, f) ==
              e.info.bytes;
      const uint64_t pad = (alignment - e.info.bytes % alignment) % alignment;
      ok = ok && std::fwrite(zeros.data(), 1, pad, f) == pad;
    }
    return ok;
  });
}

} // namespace qat::gguf
