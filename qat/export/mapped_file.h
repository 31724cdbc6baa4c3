// A whole file mapped read-only into memory: pages are read from disk when
// first touched, so a multi-GB file costs no buffer. Torch-free; shared by the
// safetensors reader and the token corpora (trainers/data/corpus.h).
#pragma once

#include <cstdint>
#include <string>

namespace qat {

class MappedFile {
 public:
  // Throws std::runtime_error "<error_prefix>: cannot open: ...", "...: not a
  // regular file" or "...: cannot map: ...".
  MappedFile(const std::string& path, const std::string& error_prefix);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const {
    return static_cast<const unsigned char*>(address_);
  }
  uint64_t size() const {
    return size_;
  }
  // Drops the pages of [begin, end) that lie wholly inside it (they are read
  // again if touched), so that data copied out does not stay resident.
  void release(const void* begin, const void* end) const;
  // Tells the kernel the file is read at random places (no read-ahead).
  void advise_random() const;

 private:
  void* address_ = nullptr;
  uint64_t size_ = 0;
};

} // namespace qat
