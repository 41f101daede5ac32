// pfjax/dispatch_impl.h -- the one XLA FFI handler behind every CPU kernel.
//
// Compiled once per cache into the dispatch library. Kernels register their descriptor
// (pfjax/kernel.h) under their name; the handler finds it by the `kernel` attribute of the
// custom call, checks the buffers, and splits the work over XLA's own CPU thread pool.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define PFJAX_HAVE_MXCSR 1
#endif

#include "pfjax/kernel.h"
#include "xla/ffi/api/ffi.h"

namespace pfjax::rt {

namespace ffi = xla::ffi;

// Shared by the caller and the pool tasks; pool tasks may start after the call returned
// (they then find no work), so the state is reference counted.
struct ParallelState {
  BodyFn body;
  int32_t stream = 0;
  int64_t total, chunk, num_chunks;
  void* in[64];
  void* out[65];  // results, then the scratch
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  unsigned int mxcsr = 0;

  ParallelState() = default;
  // The next phase's state: the same buffers and store mode, fresh counters.
  ParallelState(const ParallelState& prev, BodyFn next_body) : body(next_body), stream(prev.stream) {
    std::copy(std::begin(prev.in), std::end(prev.in), std::begin(in));
    std::copy(std::begin(prev.out), std::end(prev.out), std::begin(out));
  }

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
      body(in, out, begin, std::min(total, begin + chunk), stream);
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

// Runs body over [0, total) in chunks on the caller and up to pool.num_threads() - 1
// helpers, and returns when every chunk is done.
inline void RunParallel(ffi::ThreadPool& pool, const std::shared_ptr<ParallelState>& state,
                        BodyFn body, int64_t total, int64_t chunk) {
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
}

// True when the first and last page of [p, p + bytes) are resident. Freshly mapped
// output pages fault in zeroed (and cached), after which streaming stores only add traffic.
inline bool PagesResident(const void* p, int64_t bytes) {
  static const long page = sysconf(_SC_PAGESIZE);
  if (bytes <= 0 || page <= 0) return false;
  unsigned char v = 0;
  for (const char* at : {static_cast<const char*>(p), static_cast<const char*>(p) + bytes - 1}) {
    void* base = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(at) & ~uintptr_t(page - 1));
    if (mincore(base, 1, &v) != 0 || (v & 1) == 0) return false;
  }
  return true;
}

inline ffi::Error Launch(ffi::ThreadPool& pool, ffi::RemainingArgs& args,
                         ffi::RemainingRets& rets, const std::string& name,
                         const KernelInfo& k) {
  const size_t num_in = k.num_in, num_out = k.num_out;
  const int64_t* in_sizes = k.in_sizes;
  const int64_t* out_sizes = k.out_sizes;
  const BodyFn body = k.body;
  const int64_t total = k.total;
  int64_t chunk = k.chunk;
  if (args.size() != num_in || rets.size() != num_out || num_in > 64 || num_out > 64) {
    return ffi::Error::InvalidArgument(name + ": expected " +
                                       std::to_string(num_in) + " operands and " +
                                       std::to_string(num_out) + " results");
  }
  auto state = std::make_shared<ParallelState>();
  for (size_t i = 0; i < num_in; ++i) {
    auto buf = args.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>(buf->element_count()) != in_sizes[i])
      return ffi::Error::InvalidArgument(name + ": operand " + std::to_string(i) +
                                         " has " + std::to_string(buf->element_count()) +
                                         " elements, kernel was built for " +
                                         std::to_string(in_sizes[i]));
    state->in[i] = buf->untyped_data();
  }
  for (size_t i = 0; i < num_out; ++i) {
    auto buf = rets.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>((*buf)->element_count()) != out_sizes[i])
      return ffi::Error::InvalidArgument(name + ": result " + std::to_string(i) +
                                         " has the wrong size");
    state->out[i] = (*buf)->untyped_data();
  }
  if (k.can_stream == 2) {  // PFJAX_NONTEMPORAL=1 at build time: stream unconditionally
    state->stream = 1;
  } else if (k.can_stream) {
    bool resident = true;
    for (size_t i = 0; i < num_out && resident; ++i) {
      auto buf = rets.get<ffi::AnyBuffer>(i);
      resident = PagesResident(state->out[i], static_cast<int64_t>((*buf)->size_bytes()));
    }
    state->stream = resident ? 1 : 0;
  }
  std::unique_ptr<char, decltype(&std::free)> scratch(nullptr, &std::free);
  if (k.scratch_bytes > 0) {
    scratch.reset(static_cast<char*>(std::aligned_alloc(64, (k.scratch_bytes + 63) / 64 * 64)));
    if (!scratch) return ffi::Error::Internal(name + ": out of memory for scratch");
    state->out[num_out] = scratch.get();
  }
  chunk = std::max<int64_t>(1, std::min(chunk, std::max<int64_t>(total, 1)));
  for (int32_t phase = 0; phase < std::max(1, k.num_phases); ++phase) {
    const BodyFn phase_body = phase == 0 ? body : k.later_bodies[phase - 1];
    const FinishFn finish = phase == 0 ? k.finish : k.later_finishes[phase - 1];
    if (total > 0) {
      // A fresh state per phase: pool tasks of an earlier phase that start late find
      // that phase's (exhausted) counters, never this one's.
      if (phase > 0) state = std::make_shared<ParallelState>(*state, phase_body);
      RunParallel(pool, state, phase_body, total, chunk);
    }
    if (finish) finish(state->in, state->out);
  }
  return ffi::Error::Success();
}


// name -> descriptor of every kernel loaded in this process
inline std::shared_mutex registry_mu;
inline std::unordered_map<std::string, const KernelInfo*> registry;

inline ffi::Error Dispatch(ffi::ThreadPool pool, std::string_view kernel, ffi::RemainingArgs args,
                           ffi::RemainingRets rets) {
  std::string name(kernel);
  const KernelInfo* info = nullptr;
  {
    std::shared_lock<std::shared_mutex> lock(registry_mu);
    auto it = registry.find(name);
    if (it != registry.end()) info = it->second;
  }
  if (info == nullptr)
    return ffi::Error::Internal("pfjax: kernel " + name + " is not loaded in this process");
  return Launch(pool, args, rets, name, *info);
}

}  // namespace pfjax::rt

extern "C" __attribute__((visibility("default"))) int pfjax_register_kernel(
    const char* name, const pfjax::rt::KernelInfo* info) {
  if (info == nullptr || info->abi_version != pfjax::rt::kAbiVersion) return 1;
  std::unique_lock<std::shared_mutex> lock(pfjax::rt::registry_mu);
  pfjax::rt::registry[name] = info;
  return 0;
}

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* pfjax_dispatch(
    XLA_FFI_CallFrame*);
XLA_FFI_DEFINE_HANDLER_SYMBOL(pfjax_dispatch, pfjax::rt::Dispatch,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<std::string_view>("kernel")
                                  .RemainingArgs()
                                  .RemainingRets());
