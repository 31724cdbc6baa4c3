// The C++ half of the Python conformance tests (tests/python/): each command
// reads inputs a reference implementation wrote, runs qat on them, and writes
// what qat computed for the Python side to compare.
//
//   roundtrip IN OUT   read IN with qat's safetensors reader and write it again
//                      with qat's writer (same names, order, metadata)
//   gguf IN OUT        for every float32 tensor NAME in IN (last dimension a
//                      multiple of 32), write NAME.q8_0 / NAME.q4_0 (the
//                      stored GGUF blocks, uint8) and NAME.fq_q8_0 /
//                      NAME.fq_q4_0 (qat::fake_quant_gguf of it)
#include <cstdio>
#include <exception>
#include <string>

#include "kernels/ref/gguf_ref.h"
#include "ops/ops.h"
#include "qat/export/safetensors.h"

namespace {

using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

void roundtrip(const char* in_path, const char* out_path) {
  const auto in = qat::safetensors::File::read(in_path);
  Tensors tensors;
  for (const auto& name : in.names())
    tensors.emplace_back(name, in.tensor(name));
  qat::safetensors::write(out_path, tensors, in.metadata());
}

void gguf(const char* in_path, const char* out_path) {
  using qat::kernels::GgufType;
  const auto in = qat::safetensors::File::read(in_path);
  Tensors out;
  for (const auto& name : in.names()) {
    const torch::Tensor x = in.tensor(name).contiguous();
    for (const auto& [type, type_name] :
         {std::pair{GgufType::q8_0, "q8_0"},
          std::pair{GgufType::q4_0, "q4_0"}}) {
      torch::Tensor bytes = torch::empty(
          {x.numel() / qat::kernels::kGgufBlockSize *
           qat::kernels::gguf_block_bytes(type)},
          torch::kByte);
      qat::kernels::quantize_gguf_ref(
          x.const_data_ptr<float>(),
          x.numel(),
          type,
          bytes.mutable_data_ptr<uint8_t>());
      out.emplace_back(name + "." + type_name, bytes);
      out.emplace_back(
          name + ".fq_" + type_name, qat::ops::fake_quant_gguf(x, type_name));
    }
  }
  qat::safetensors::write(out_path, out);
}

} // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (argc != 4 || (command != "roundtrip" && command != "gguf")) {
    std::fprintf(
        stderr,
        "usage: %s roundtrip|gguf IN.safetensors OUT.safetensors\n",
        argv[0]);
    return 2;
  }
  try {
    if (command == "roundtrip")
      roundtrip(argv[2], argv[3]);
    else
      gguf(argv[2], argv[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
