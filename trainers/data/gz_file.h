// Reading gzip-compressed (or plain) files through zlib, with errors that name
// the file. Internal to trainers/data.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace qat::data {

// gzread reads plain files too, so one reader serves .gz and uncompressed.
class GzFile {
 public:
  // `kind` starts error messages: "<kind> '<path>': <what>".
  GzFile(const std::string& path, std::string kind)
      : path_(path), kind_(std::move(kind)) {
    file_ = gzopen(path.c_str(), "rb");
    if (!file_)
      fail(std::string("cannot open: ") + std::strerror(errno));
  }
  ~GzFile() {
    if (file_)
      gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(kind_ + " '" + path_ + "': " + what);
  }

  // Reads up to n bytes; returns how many were read.
  size_t read(void* out, size_t n) {
    size_t total = 0;
    auto* bytes = static_cast<unsigned char*>(out);
    while (total < n) {
      const unsigned chunk =
          static_cast<unsigned>(std::min<size_t>(n - total, 1u << 30));
      const int got = gzread(file_, bytes + total, chunk);
      if (got < 0) {
        int code = 0;
        fail(std::string("corrupt gzip data: ") + gzerror(file_, &code));
      }
      if (got == 0)
        break;
      total += static_cast<size_t>(got);
    }
    return total;
  }

  // The whole (decompressed) contents.
  std::string read_all() {
    std::string out;
    char buffer[1 << 16];
    size_t n;
    while ((n = read(buffer, sizeof buffer)) > 0)
      out.append(buffer, n);
    return out;
  }

 private:
  std::string path_, kind_;
  gzFile file_ = nullptr;
};

} // namespace qat::data
