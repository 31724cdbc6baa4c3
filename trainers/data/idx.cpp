#include "trainers/data/idx.h"

#include <torch/torch.h>

#include <stdexcept>
#include <vector>

#include "trainers/data/gz_file.h"

namespace qat::data {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("IDX file '" + path + "': " + what);
}

} // namespace

torch::Tensor read_idx_u8(const std::string& path) {
  GzFile file(path, "IDX file");
  unsigned char magic[4];
  if (file.read(magic, 4) != 4)
    fail(path, "truncated: shorter than the 4-byte magic");
  if (magic[0] != 0 || magic[1] != 0) {
    fail(path, "bad magic: the first two bytes must be zero (not an IDX file)");
  }
  if (magic[2] != 0x08) {
    fail(
        path,
        "element type 0x" + std::to_string(magic[2]) +
            " is not 0x08 (unsigned byte)");
  }
  const int dims = magic[3];
  if (dims < 1 || dims > 4)
    fail(path, "has " + std::to_string(dims) + " dimensions; expected 1 to 4");
  std::vector<int64_t> shape;
  int64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    unsigned char be[4];
    if (file.read(be, 4) != 4)
      fail(path, "truncated inside the dimension sizes");
    const int64_t size = (int64_t{be[0]} << 24) | (int64_t{be[1]} << 16) |
        (int64_t{be[2]} << 8) | int64_t{be[3]};
    // 2^31 elements is far beyond any IDX data set; larger means corruption.
    if (size > (int64_t{1} << 31) / std::max<int64_t>(count, 1))
      fail(path, "dimension sizes multiply past 2^31 elements");
    shape.push_back(size);
    count *= size;
  }
  torch::Tensor out = torch::empty(shape, torch::kUInt8);
  const size_t got = file.read(out.data_ptr(), static_cast<size_t>(count));
  if (got != static_cast<size_t>(count)) {
    fail(
        path,
        "truncated: " + std::to_string(got) + " of " + std::to_string(count) +
            " data bytes");
  }
  unsigned char extra;
  if (file.read(&extra, 1) != 0)
    fail(path, "has bytes after the " + std::to_string(count) + " data bytes");
  return out;
}

} // namespace qat::data
