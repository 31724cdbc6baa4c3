// Shim: opaque gloo::Context. Only the non-virtual, exported member
// gloo::Context::setTimeout(std::chrono::milliseconds) is declared, because
// ProcessGroupGloo::setTimeout() (inline in the header) calls it.
// Never construct, copy, delete or take sizeof() of this type.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  Context() = delete;
  Context(const Context&) = delete;
  void setTimeout(
      std::chrono::milliseconds timeout); // defined in libtorch_cpu.so
};
} // namespace gloo
