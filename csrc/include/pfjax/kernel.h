// pfjax/kernel.h -- what every generated CPU kernel includes.
//
// Kernels do not include the XLA FFI headers (they cost ~2 s of compile time each):
// a kernel exports only a descriptor, and the single FFI handler in dispatch_impl.h
// (compiled once per cache) binds the call frame and runs the body on XLA's thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "pfjax/fastmath.h"
#include "pfjax/math.h"

namespace pfjax::rt {

// Body of a kernel: processes elements [begin, end) of the flattened iteration space.
using BodyFn = void (*)(void* const* in, void* const* out, int64_t begin, int64_t end);

struct KernelInfo {
  int32_t abi_version;  // kAbiVersion of the header the kernel was built with
  BodyFn body;
  int64_t num_in, num_out;
  const int64_t* in_sizes;   // element counts the kernel was built for
  const int64_t* out_sizes;
  int64_t total;  // elements of the iteration space
  int64_t chunk;  // elements per parallel task
};

constexpr int32_t kAbiVersion = 1;

// Float to integer with XLA's semantics: NaN -> 0, out of range saturates.
template <typename I, typename F>
static inline __attribute__((always_inline)) I f2i(F x) {
  constexpr F lo = static_cast<F>(std::numeric_limits<I>::min());
  constexpr F hi = static_cast<F>(std::numeric_limits<I>::max());
  const F c = x != x ? F(0) : (x < lo ? lo : x);
  return c >= hi ? std::numeric_limits<I>::max() : static_cast<I>(c);
}

}  // namespace pfjax::rt

#define PFJAX_EXPORT_KERNEL(NAME, BODY, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES, TOTAL, CHUNK) \
  extern "C" __attribute__((visibility("default"))) const pfjax::rt::KernelInfo*           \
  NAME##_info() {                                                                           \
    static const pfjax::rt::KernelInfo info{pfjax::rt::kAbiVersion, BODY, NUM_IN, NUM_OUT,  \
                                            IN_SIZES, OUT_SIZES, TOTAL, CHUNK};             \
    return &info;                                                                           \
  }
