// libFuzzer target for the file readers that take files from the internet:
// every input goes through the GGUF reader (and every tensor through
// dequantization) and through the safetensors reader (and every tensor out).
// A reader may refuse an input with its own error; anything else (a crash, a
// sanitizer report, another exception, a hang) is a finding.
//
// Built and run by scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined).
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "qat/export/gguf.h"
#include "qat/export/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      "/dev/shm/qat_fuzz_" + std::to_string(::getpid());
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(
          reinterpret_cast<const char*>(data),
          static_cast<std::streamsize>(size));
  try {
    const auto file = qat::gguf::File::read(path);
    for (const auto& t : file.tensors())
      (void)file.dequantize(t.name);
  } catch (const qat::gguf::GgufError&) {
  }
  try {
    const auto file = qat::safetensors::File::read(path);
    for (const auto& name : file.names())
      (void)file.tensor(name);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
