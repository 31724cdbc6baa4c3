// Shim: only opaque handles are needed (held via shared_ptr/unique_ptr).
// The real objects are created and destroyed inside libtorch_cpu.so.
#pragma once
namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
class Context;
} // namespace transport
} // namespace gloo
