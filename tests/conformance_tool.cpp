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
//   llama DIR IN OUT   load the Hugging Face Llama checkpoint in DIR
//                      (config.json, model.safetensors) into qat's decoder;
//                      for IN's int64 "tokens" [batch, time] write "logits"
//                      (one forward), "cached_logits" (the first half in one
//                      forward, then one token at a time through the KV cache)
//                      and "generated" (8 greedy tokens after the tokens)
#include <cstdio>
#include <exception>
#include <string>

#include "kernels/ref/gguf_ref.h"
#include "ops/ops.h"
#include "qat/export/safetensors.h"
#include "trainers/models/llama.h"
#include "trainers/models/weights.h"

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

void llama(const std::string& dir, const char* in_path, const char* out_path) {
  using namespace qat::models;
  LlamaForCausalLM lm(LlamaConfig::from_hf_json(dir + "/config.json"));
  load_weights(*lm, dir + "/model.safetensors");
  lm->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens =
      qat::safetensors::File::read(in_path).tensor("tokens");
  const int64_t time = tokens.size(1), first = time / 2;
  KvCache cache;
  std::vector<torch::Tensor> steps{lm(tokens.narrow(1, 0, first), &cache)};
  for (int64_t t = first; t < time; ++t)
    steps.push_back(lm(tokens.narrow(1, t, 1), &cache));
  qat::safetensors::write(
      out_path,
      {{"logits", lm(tokens)},
       {"cached_logits", torch::cat(steps, 1)},
       {"generated", lm->generate(tokens, 8)}});
}

} // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  const bool known =
      command == "roundtrip" || command == "gguf" || command == "llama";
  if (!known || argc != (command == "llama" ? 5 : 4)) {
    std::fprintf(
        stderr,
        "usage: %s roundtrip|gguf IN.safetensors OUT.safetensors\n"
        "       %s llama CHECKPOINT_DIR IN.safetensors OUT.safetensors\n",
        argv[0],
        argv[0]);
    return 2;
  }
  try {
    if (command == "roundtrip")
      roundtrip(argv[2], argv[3]);
    else if (command == "gguf")
      gguf(argv[2], argv[3]);
    else
      llama(argv[2], argv[3], argv[4]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
