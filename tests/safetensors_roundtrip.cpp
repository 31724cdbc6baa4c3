// Reads a safetensors file with qat's reader and writes it again with qat's
// writer (same names, order and metadata): the C++ half of
// tests/python/test_safetensors.py, which checks both against Hugging Face's
// safetensors package.
#include <cstdio>
#include <exception>

#include "qat/export/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN.safetensors OUT.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const auto in = qat::safetensors::File::read(argv[1]);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& name : in.names())
      tensors.emplace_back(name, in.tensor(name));
    qat::safetensors::write(argv[2], tensors, in.metadata());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
