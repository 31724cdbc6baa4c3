#include "qat/export/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qat {

MappedFile::MappedFile(const std::string& path, const std::string& prefix) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(
        prefix + ": cannot open: " + std::string(std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(prefix + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    address_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address_ == MAP_FAILED) {
      const int error = errno;
      address_ = nullptr;
      ::close(fd);
      throw std::runtime_error(
          prefix + ": cannot map: " + std::string(std::strerror(error)));
    }
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (address_)
    munmap(address_, size_);
}

void MappedFile::release(const void* begin, const void* end) const {
  // Only whole pages: a neighbour may still be in use.
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<uintptr_t>(begin);
  const auto e = reinterpret_cast<uintptr_t>(end);
  const uintptr_t first = (b + page - 1) / page * page;
  const uintptr_t last = e / page * page;
  if (last > first)
    madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void MappedFile::advise_random() const {
  if (address_)
    madvise(address_, size_, MADV_RANDOM);
}

} // namespace qat
