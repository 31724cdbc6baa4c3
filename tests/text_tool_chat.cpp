// Placeholder, replaced by the real command.
#include <cstdio>
int chat_command(int, char**) {
  std::fprintf(stderr, "text_tool chat: not built yet\n");
  return 2;
}
