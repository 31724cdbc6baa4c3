// text_tool gguf-mix PRESET < model.json: the GGML type llama-quantize gives
// each tensor (qat::models::gguf_mix), for tests/python/test_gguf_mix.py.
//
// stdin:  {"n_layer": .., "n_head": .., "n_head_kv": ..,
//          "tensors": [{"name": .., "shape": [..]}, ...]}
//         (shape in GGUF order, ne[0] first; n_head_kv defaults to n_head)
// stdout: {"tensor name": "type name", ...}
// Exit status 2 with a message on stderr for a bad preset, model or input.
#include <exception>
#include <iostream>

#include <nlohmann/json.hpp>

#include "trainers/models/gguf_mix.h"

int gguf_mix_command(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: text_tool gguf-mix PRESET < model.json   (PRESET: ";
    for (const std::string& p : qat::models::gguf_mix_presets()) {
      std::cerr << p << " ";
    }
    std::cerr << ")\n";
    return 2;
  }
  try {
    // An unknown preset fails before stdin is read.
    qat::models::gguf_mix(argv[1], {1, 1, 1, {}});
    const nlohmann::json in = nlohmann::json::parse(std::cin);
    qat::models::GgufModelShape model;
    model.n_layer = in.at("n_layer").get<int64_t>();
    model.n_head = in.at("n_head").get<int64_t>();
    model.n_head_kv = in.value("n_head_kv", model.n_head);
    for (const auto& t : in.at("tensors")) {
      model.tensors.push_back(
          {t.at("name").get<std::string>(),
           t.at("shape").get<std::vector<int64_t>>()});
    }
    const nlohmann::json out = qat::models::gguf_mix(argv[1], model);
    std::cout << out.dump(1) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "text_tool gguf-mix: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
