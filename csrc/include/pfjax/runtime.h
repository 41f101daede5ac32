// pfjax/runtime.h -- fixed runtime for generated CPU kernels.
//
// A generated kernel is a body function over a range of the flattened iteration space
// plus one PFJAX_DEFINE_KERNEL line. This header binds the XLA FFI call frame, checks the
// buffers, and splits the range over XLA's own CPU thread pool (ffi::ThreadPool).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define PFJAX_HAVE_MXCSR 1
#endif

#include "pfjax/math.h"
#include "xla/ffi/api/ffi.h"

namespace pfjax::rt {

namespace ffi = xla::ffi;

// Body of a kernel: processes elements [begin, end) of the flattened iteration space.
using BodyFn = void (*)(void* const* in, void* const* out, int64_t begin, int64_t end);

// Float to integer with XLA's semantics: NaN -> 0, out of range saturates.
template <typename I, typename F>
static inline __attribute__((always_inline)) I f2i(F x) {
  constexpr F lo = static_cast<F>(std::numeric_limits<I>::min());
  constexpr F hi = static_cast<F>(std::numeric_limits<I>::max());
  const F c = x != x ? F(0) : (x < lo ? lo : x);
  return c >= hi ? std::numeric_limits<I>::max() : static_cast<I>(c);
}

// Shared by the caller and the pool tasks; pool tasks may start after the call returned
// (they then find no work), so the state is reference counted.
struct ParallelState {
  BodyFn body;
  int64_t total, chunk, num_chunks;
  void* in[64];
  void* out[64];
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  unsigned int mxcsr = 0;

  void work() {
#ifdef PFJAX_HAVE_MXCSR
    // Run with the caller's floating-point mode (XLA may flush denormals).
    const unsigned int saved = _mm_getcsr();
    _mm_setcsr(mxcsr);
#endif
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= num_chunks) break;
      const int64_t begin = c * chunk;
      body(in, out, begin, std::min(total, begin + chunk));
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
#ifdef PFJAX_HAVE_MXCSR
    _mm_setcsr(saved);
#endif
  }
};

inline ffi::Error Launch(ffi::ThreadPool& pool, ffi::RemainingArgs& args,
                         ffi::RemainingRets& rets, const char* name, size_t num_in,
                         const int64_t* in_sizes, size_t num_out, const int64_t* out_sizes,
                         BodyFn body, int64_t total, int64_t chunk) {
  if (args.size() != num_in || rets.size() != num_out || num_in > 64 || num_out > 64) {
    return ffi::Error::InvalidArgument(std::string(name) + ": expected " +
                                       std::to_string(num_in) + " operands and " +
                                       std::to_string(num_out) + " results");
  }
  auto state = std::make_shared<ParallelState>();
  for (size_t i = 0; i < num_in; ++i) {
    auto buf = args.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>(buf->element_count()) != in_sizes[i])
      return ffi::Error::InvalidArgument(std::string(name) + ": operand " + std::to_string(i) +
                                         " has " + std::to_string(buf->element_count()) +
                                         " elements, kernel was built for " +
                                         std::to_string(in_sizes[i]));
    state->in[i] = buf->untyped_data();
  }
  for (size_t i = 0; i < num_out; ++i) {
    auto buf = rets.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>((*buf)->element_count()) != out_sizes[i])
      return ffi::Error::InvalidArgument(std::string(name) + ": result " + std::to_string(i) +
                                         " has the wrong size");
    state->out[i] = (*buf)->untyped_data();
  }
  if (total <= 0) return ffi::Error::Success();
  chunk = std::max<int64_t>(1, std::min(chunk, total));
  state->body = body;
  state->total = total;
  state->chunk = chunk;
  state->num_chunks = (total + chunk - 1) / chunk;
#ifdef PFJAX_HAVE_MXCSR
  state->mxcsr = _mm_getcsr();
#endif
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), state->num_chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->work(); });
  state->work();
  // Every chunk was claimed by a running thread, so this wait always ends.
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] {
    return state->done.load(std::memory_order_acquire) == state->num_chunks;
  });
  return ffi::Error::Success();
}

}  // namespace pfjax::rt

// Kernels are compiled with hidden visibility; only the handler symbols are exported.
#define PFJAX_DEFINE_KERNEL(NAME, BODY, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES, TOTAL, CHUNK) \
  extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NAME(XLA_FFI_CallFrame*); \
  static xla::ffi::Error NAME##_impl(xla::ffi::ThreadPool pool, xla::ffi::RemainingArgs args, \
                                     xla::ffi::RemainingRets rets) {                          \
    return pfjax::rt::Launch(pool, args, rets, #NAME, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES,   \
                             BODY, TOTAL, CHUNK);                                            \
  }                                                                                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, NAME##_impl,                                            \
                                xla::ffi::Ffi::Bind()                                         \
                                    .Ctx<xla::ffi::ThreadPool>()                              \
                                    .RemainingArgs()                                          \
                                    .RemainingRets())
