// The value of a one-element buffer as the host last saw it. The quantizers'
// switches and the observers' batch counts live in buffers, so that they are
// saved and loaded with the model, and every forward consults them: reading a
// CUDA buffer each time would make the host wait for the device several times
// per layer. The value is read again only when the buffer may have changed:
// an in-place write bumps its version counter, and to(), set_data() and
// loading give it other storage. Writes through set() keep the cache.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qat {

template <typename T>
class BufferValue {
 public:
  T get(const at::Tensor& buffer) const {
    if (buffer.is_inference()) // no version counter
      return buffer.item<T>();
    const void* data = buffer.const_data_ptr();
    const int64_t version = buffer._version();
    if (!known_ || data != data_ || version != version_) {
      value_ = buffer.item<T>();
      remember(buffer, value_);
    }
    return value_;
  }

  void set(at::Tensor& buffer, T value) {
    buffer.fill_(value);
    if (!buffer.is_inference())
      remember(buffer, value);
  }

 private:
  void remember(const at::Tensor& buffer, T value) const {
    known_ = true;
    data_ = buffer.const_data_ptr();
    version_ = buffer._version();
    value_ = value;
  }

  mutable bool known_ = false;
  mutable const void* data_ = nullptr;
  mutable int64_t version_ = 0;
  mutable T value_{};
};

} // namespace qat
