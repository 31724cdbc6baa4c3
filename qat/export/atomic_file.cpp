#include "qat/export/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace qat {

void write_file_atomically(
    const std::string& path,
    const std::string& what,
    const std::function<bool(std::FILE*)>& write_content) {
  // The process id keeps concurrent writers of the same path apart.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    throw std::runtime_error(
        what + ": cannot create '" + tmp + "': " + std::strerror(errno));
  }
  bool ok = write_content(f);
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    throw std::runtime_error(
        what + ": writing '" + path + "' failed: " + reason);
  }
}

void write_string_atomically(
    const std::string& path,
    const std::string& what,
    const std::string& content) {
  write_file_atomically(path, what, [&](std::FILE* f) {
    return std::fwrite(content.data(), 1, content.size(), f) == content.size();
  });
}

} // namespace qat
