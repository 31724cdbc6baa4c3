// The C++ half of the Torch-free text conformance tests (tests/python/):
// tokenizer.json tokenizers and chat templates, checked against Hugging Face
// `tokenizers` and transformers' apply_chat_template. Torch-free, so it builds
// in seconds.
//
//   tokenize ...   see tests/text_tool_tokenizer.cpp
//   chat ...       see tests/text_tool_chat.cpp
//   gguf-mix ...   see tests/text_tool_gguf_mix.cpp
#include <cstdio>
#include <cstring>
#include <exception>

int tokenizer_command(int argc, char** argv); // text_tool_tokenizer.cpp
int chat_command(int argc, char** argv);      // text_tool_chat.cpp
int gguf_mix_command(int argc, char** argv);  // text_tool_gguf_mix.cpp

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: text_tool tokenize|chat|gguf-mix ...\n");
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "tokenize") == 0)
      return tokenizer_command(argc - 1, argv + 1);
    if (std::strcmp(argv[1], "chat") == 0)
      return chat_command(argc - 1, argv + 1);
    if (std::strcmp(argv[1], "gguf-mix") == 0)
      return gguf_mix_command(argc - 1, argv + 1);
    std::fprintf(stderr, "text_tool: unknown command '%s'\n", argv[1]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
