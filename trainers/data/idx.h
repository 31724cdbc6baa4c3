// IDX files (the MNIST family's format), gzip-compressed or plain: a 4-byte
// magic (0, 0, element type, number of dimensions), the dimensions as
// big-endian uint32, then the elements. Only unsigned bytes (type 0x08), the
// type every MNIST-style data set uses, are read.
#pragma once

#include <torch/types.h>

#include <string>

namespace qat::data {

// The file's contents as a uint8 tensor of its dimensions. Throws
// std::runtime_error naming the file and what is wrong: a missing file, a bad
// magic or element type, a truncated body, trailing bytes, corrupt gzip data.
torch::Tensor read_idx_u8(const std::string& path);

} // namespace qat::data
