// Placeholder, replaced by the real command.
#include <cstdio>
int tokenizer_command(int, char**) {
  std::fprintf(stderr, "text_tool tokenizer: not built yet\n");
  return 2;
}
