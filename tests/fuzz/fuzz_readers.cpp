// libFuzzer target for the file readers that take files from the internet:
// every input goes through the GGUF reader (and every tensor through
// dequantization), the safetensors reader (and every tensor out), the
// tokenizer.json reader (and an encode / decode of a fixed text) and the chat
// template parser. (Templates are parsed, not rendered: a template may loop
// for as long as it likes, which is no finding.)
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
#include "trainers/text/chat_template.h"
#include "trainers/text/hf_tokenizer.h"

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
  try {
    const auto tokenizer = qat::text::HfTokenizer::from_file(path);
    (void)tokenizer.decode(
        tokenizer.encode("Hello, world! 12345 \xc3\xa9t\xc3\xa9", true));
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  try {
    (void)qat::text::ChatTemplate::parse(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
